"""Lab 10, part 1: a burst that overflows the KV cache, the preemption storm it causes, and the knobs that end it.

An in-process engine gets 12 KV blocks of 32 tokens (11 usable: vLLM keeps block 0 as its null
block) and 8 requests at once whose prompts and outputs need 3 blocks each at the end: 24 blocks
for 11. vLLM v1 admits as many as fit, and when a running request needs one more block for its
next token and none is free, the scheduler preempts the request it scheduled last: its blocks go
back to the pool, its `num_computed_tokens` drops to 0, and when it is admitted again it
prefills its prompt and every token it had generated once more. Those tokens are the recompute
tax (Lab 3's `recompute_tax`, read here from the same recorded scheduler decisions).

The same burst then goes through vLLM's real `Scheduler` with no model
(`labs.core.vllm_internals.failures.run_burst`) under each knob turned alone: the scheduler's
decisions depend only on token counts, so it preempts exactly as the engine does, in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from labs.core.engine import make_llm
from labs.core.live import EngineObserver
from labs.core.models.resolve import resolve_model
from labs.core.vllm_internals.failures import BurstRun, record_preemptions, run_burst
from labs.core.vllm_internals.live_engine import external_request_id, scheduler
from labs.lab3_continuous_batching.predictions import RecomputeTax, recompute_tax
from labs.lab3_continuous_batching.traces import TraceRequest, distinct_prompt

# 12 blocks x 32 tokens; a max_model_len of 352 = 11 x 32 is the longest vLLM accepts for that pool.
# Prefix caching off: a resumed request recomputes all it lost (no cached block softens the tax).
STORM_ENGINE: dict[str, Any] = dict(block_size=32, num_gpu_blocks_override=12, max_model_len=352, max_num_seqs=8,
                                    max_num_batched_tokens=256, enable_prefix_caching=False)
NUM_BURST = 8
PROMPT_LEN = 24
MAX_TOKENS = 48
# Each knob turned alone, from STORM_ENGINE's value to this one (num_blocks counts the null block).
KNOBS: dict[str, dict[str, int]] = {
    "as configured": {},
    "max_num_seqs 8 -> 3": {"max_num_seqs": 3},
    "max_num_batched_tokens 256 -> 64": {"max_num_batched_tokens": 64},
    "KV blocks 12 -> 18": {"num_blocks": 18},
}


def burst(num_requests: int = NUM_BURST, prompt_len: int = PROMPT_LEN, max_tokens: int = MAX_TOKENS) -> list[TraceRequest]:
    """The burst: `num_requests` distinct prompts (no shared prefix) arriving together, EOS ignored."""
    return [TraceRequest(f"burst-{i}", distinct_prompt(i, prompt_len), max_tokens) for i in range(num_requests)]


def make_storm_engine(**overrides: Any) -> Any:
    """An in-process engine with `STORM_ENGINE`'s scarce KV cache (overrides win)."""
    return make_llm(**{**STORM_ENGINE, **overrides})


@dataclass
class StormRun:
    """The burst on the live engine: the observer's step history and vLLM's own preemption counts.

    Attributes:
        observer: every step's `StepObservation` (scheduled tokens, queues, preempted ids, free blocks).
        trace: the requests.
        lost_tokens: request id -> `num_computed_tokens` at each preemption, read by the live
            scheduler's own `_preempt_request` (the engine's counter of thrown-away work).
    """

    observer: EngineObserver
    trace: list[TraceRequest]
    lost_tokens: dict[str, list[int]]

    @property
    def num_preemptions(self) -> int:
        return sum(len(obs.preempted_ids) for obs in self.observer.history)

    @property
    def tax(self) -> RecomputeTax:
        """The recompute tax from the recorded scheduler outputs (Lab 3's definition)."""
        return recompute_tax(self.observer.history, self.trace)

    @property
    def engine_recomputed_tokens(self) -> int:
        return sum(sum(v) for v in self.lost_tokens.values())


def run_storm(llm: Any, trace: list[TraceRequest] | None = None) -> StormRun:
    """Send the whole burst at once to the live engine and step it until every request finished."""
    trace = trace or burst()
    observer = EngineObserver(llm)
    for req in trace:
        observer.add_request(req.request_id, req.prompt_token_ids, req.sampling_params())
    with record_preemptions(scheduler(llm)) as lost:
        observer.run()
    return StormRun(observer, trace, {external_request_id(rid): tokens for rid, tokens in lost.items()})


def storm_table(run: StormRun) -> pd.DataFrame:
    """One row per step: running, waiting, free blocks, tokens scheduled, who was preempted."""
    rows = [{"step": o.step, "running": len(o.running_ids), "waiting": len(o.waiting_ids),
             "free_blocks": o.num_free_blocks, "tokens": sum(o.num_scheduled_tokens.values()),
             "preempted": ",".join(o.preempted_ids), "finished": ",".join(o.finished_ids)}
            for o in run.observer.history]
    return pd.DataFrame(rows).set_index("step")


def run_standalone(trace: list[TraceRequest], *, num_blocks: int = STORM_ENGINE["num_gpu_blocks_override"],
                   max_num_seqs: int = STORM_ENGINE["max_num_seqs"],
                   max_num_batched_tokens: int = STORM_ENGINE["max_num_batched_tokens"],
                   block_size: int = STORM_ENGINE["block_size"]) -> BurstRun:
    """The burst through vLLM's real Scheduler with no model (milliseconds per run)."""
    return run_burst(resolve_model().path, {r.request_id: r.prompt_token_ids for r in trace},
                     {r.request_id: r.max_tokens for r in trace}, block_size=block_size, num_blocks=num_blocks,
                     max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                     max_model_len=STORM_ENGINE["max_model_len"])


def compare_knobs(trace: list[TraceRequest] | None = None, knobs: dict[str, dict[str, int]] = KNOBS) -> pd.DataFrame:
    """The burst under each knob, side by side: preemptions, tokens recomputed, engine steps.

    Why steps: a knob that ends the storm by admitting fewer requests at once pays in steps
    (requests wait their turn); one that adds KV space pays in memory.
    """
    trace = trace or burst()
    needed = sum(len(r.prompt_token_ids) + r.max_tokens - 1 for r in trace)
    rows = []
    for name, change in knobs.items():
        run = run_standalone(trace, **change)
        scheduled = sum(sum(s.num_scheduled_tokens.values()) for s in run.steps)
        rows.append({"knob": name, "preemptions": run.total_preemptions, "recomputed_tokens": run.recomputed_tokens,
                     "scheduled_minus_needed": scheduled - needed, "steps": len(run.steps),
                     "storm_over": run.total_preemptions == 0})
    return pd.DataFrame(rows).set_index("knob")


def explain_storm(run: StormRun) -> list[str]:
    """The diagnosis the lab prints for the storm, from the live run's own numbers."""
    tax, steps = run.tax, len(run.observer.history)
    limits = scheduler(run.observer.llm).scheduler_config
    storm_steps = [o.step for o in run.observer.history if o.preempted_ids]
    worst, lost = max(run.lost_tokens.items(), key=lambda kv: len(kv[1]), default=("-", []))
    repeat = (f"{worst} was preempted {len(lost)} times" if len(lost) > 1
              else "each preempted request once, then admitted again")
    return [
        f"KV exhaustion: {len(run.trace)} requests at once, each needing "
        f"{-(-(len(run.trace[0].prompt_token_ids) + run.trace[0].max_tokens - 1) // STORM_ENGINE['block_size'])} "
        f"blocks at its end, for {STORM_ENGINE['num_gpu_blocks_override'] - 1} usable blocks "
        f"(max_num_seqs={limits.max_num_seqs}).",
        f"Preemption storm: {run.num_preemptions} preemptions in {len(storm_steps)} of {steps} steps "
        f"(first at step {storm_steps[0] if storm_steps else '-'}); {repeat}.",
        f"Recompute tax: {tax.tokens} of {tax.num_scheduled_tokens} scheduled tokens ({100 * tax.share:.0f}%) were "
        f"computed twice; the engine's own count at each preemption says {run.engine_recomputed_tokens}.",
        "Fix: admit fewer requests than the KV cache can finish (max_num_seqs), or give it more KV space; a smaller "
        "token budget (max_num_batched_tokens) only slows prefill down and does not end the storm.",
    ]
