"""Lab 3's predict-then-see questions: who is preempted first, when, and what recompute costs.

The values come from an `EngineObserver`'s history, that is from the scheduler's own
`SchedulerOutput`s (`preempted_req_ids`, `num_scheduled_tokens`), never from a model of it.

    first_preemption   the first request the scheduler preempted, and the step (steps the engine on if needed)
    recompute_tax      tokens computed twice because of preemption-by-recompute (vLLM RFC 54644)
"""

from __future__ import annotations

from dataclasses import dataclass

from labs.core.live import EngineObserver, StepObservation
from labs.lab3_continuous_batching.traces import TraceRequest


@dataclass(frozen=True)
class Preemption:
    request_id: str
    step: int
    num_computed_tokens: int  # tokens it had computed since its last (re)start: thrown away


def preemptions(history: list[StepObservation]) -> list[Preemption]:
    """Every preemption in `history`, in order, with the tokens the preempted request lost.

    The scheduler takes back a preempted request's blocks and sets its `num_computed_tokens` to 0;
    what it had computed since it was last (re)admitted is what the recompute pays again. A request
    preempted in a step gets no tokens in that step (vLLM returns them to the budget).
    """
    since_start: dict[str, int] = {}
    found = []
    for obs in history:
        for rid in obs.preempted_ids:
            found.append(Preemption(rid, obs.step, since_start.get(rid, 0)))
            since_start[rid] = 0
        for rid, n in obs.num_scheduled_tokens.items():
            since_start[rid] = since_start.get(rid, 0) + n
    return found


def first_preemption(observer: EngineObserver, max_steps: int = 10_000) -> Preemption | None:
    """The first preemption the observer saw; steps the engine on until one happens if none has yet.

    Returns:
        The first preemption, or None if every request finished without one.
    """
    for _ in range(max_steps):
        found = preemptions(observer.history)
        if found or not observer.has_unfinished_requests():
            return found[0] if found else None
        observer.step()
    return None


@dataclass(frozen=True)
class RecomputeTax:
    """What preemption-by-recompute cost one run, in tokens the engine computed.

    Attributes:
        num_scheduled_tokens: every token the scheduler granted, all steps and requests together.
        num_needed_tokens: what the requests needed without preemption: prompt + outputs - 1 each
            (the last sampled token is never computed).
        preemptions: each preemption with the tokens it threw away.
    """

    num_scheduled_tokens: int
    num_needed_tokens: int
    preemptions: list[Preemption]

    @property
    def tokens(self) -> int:
        """Tokens computed twice: all scheduled minus all needed."""
        return self.num_scheduled_tokens - self.num_needed_tokens

    @property
    def lost_at_preemption(self) -> int:
        """The same tax counted per preemption: the tokens each preempted request had computed."""
        return sum(p.num_computed_tokens for p in self.preemptions)

    @property
    def share(self) -> float:
        """Fraction of all computed tokens that were recomputation."""
        return self.tokens / self.num_scheduled_tokens if self.num_scheduled_tokens else 0.0


def recompute_tax(history: list[StepObservation], trace: list[TraceRequest]) -> RecomputeTax:
    """The recompute tax of a finished run of `trace`, from the scheduler's decisions.

    Args:
        history: the observer's history once every request of `trace` finished.
        trace: the requests (prompt lengths and `max_tokens`, all produced: EOS is ignored).
    """
    request_ids = {req.request_id for req in trace}
    scheduled = sum(n for obs in history for rid, n in obs.num_scheduled_tokens.items() if rid in request_ids)
    needed = sum(len(req.prompt_token_ids) + req.max_tokens - 1 for req in trace)
    return RecomputeTax(scheduled, needed, preemptions(history))
