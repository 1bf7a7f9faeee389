"""Watch the real engine step by step: what each `step()` scheduled, allocated, preempted, finished.

`LLMEngine.step()` returns only finished text; the scheduler's decision (its `SchedulerOutput`)
is recorded through `labs.core.vllm_internals.record_scheduler_outputs` (and read back as plain
values with `scheduler_decision`), and the queues and block tables are read from the live
scheduler after the step. Beyond `LLM.llm_engine`'s public methods, this module reads no vLLM
structure itself: `labs.core.vllm_internals` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from labs.core import vllm_internals as vi


@dataclass(frozen=True)
class StepObservation:
    """One engine step as seen from outside.

    Attributes:
        step: 1-based step counter of this observer.
        num_scheduled_tokens: request id -> tokens the scheduler granted this step (chunked
            prefill shows as several steps with large counts; decode as 1).
        num_cached_tokens: for requests admitted this step, prompt tokens found in the prefix
            cache (not computed, not counted in num_scheduled_tokens).
        running_ids / waiting_ids: the queues after the step.
        preempted_ids: requests whose KV cache was taken back during the step.
        finished_ids: requests that finished during the step.
        block_tables: request id -> block ids after the step (running requests).
        num_free_blocks: free blocks after the step.
        seconds: wall time of the step.
    """

    step: int
    num_scheduled_tokens: dict[str, int]
    num_cached_tokens: dict[str, int]
    running_ids: list[str]
    waiting_ids: list[str]
    preempted_ids: list[str]
    finished_ids: list[str]
    block_tables: dict[str, list[int]]
    num_free_blocks: int
    seconds: float


@dataclass
class EngineObserver:
    """Steps an `LLM`'s engine and records a `StepObservation` per step.

    Args:
        llm: a `vllm.LLM` from `labs.core.engine.make_llm` (engine core in this process).
    """

    llm: Any
    history: list[StepObservation] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)  # request id -> final RequestOutput
    last_step_outputs: dict[str, Any] = field(default_factory=dict)  # request id -> RequestOutput of the last step

    def add_request(self, request_id: str, prompt: str | list[int], params: Any) -> None:
        """Queue a request: text, or token ids (to control prompt lengths exactly)."""
        engine_prompt = {"prompt_token_ids": list(prompt)} if isinstance(prompt, list) else prompt
        self.llm.llm_engine.add_request(request_id, engine_prompt, params)

    def step(self) -> StepObservation:
        recorded = vi.record_scheduler_outputs(self.llm)
        recorded.clear()
        start = time.perf_counter()
        outputs = self.llm.llm_engine.step()
        seconds = time.perf_counter() - start
        scheduled: dict[str, int] = {}
        cached: dict[str, int] = {}
        preempted: list[str] = []
        for decision in map(vi.scheduler_decision, recorded):  # one per step (more if the engine stepped twice)
            for rid, n in decision.num_scheduled_tokens.items():
                scheduled[vi.external_request_id(rid)] = scheduled.get(vi.external_request_id(rid), 0) + n
            for rid, n in decision.num_cached_tokens.items():
                cached[vi.external_request_id(rid)] = n
            preempted += [vi.external_request_id(r) for r in decision.preempted_req_ids]
        self.last_step_outputs = {vi.external_request_id(out.request_id): out for out in outputs}
        for out in outputs:
            if out.finished:
                self.outputs[vi.external_request_id(out.request_id)] = out
        queues = vi.queue_snapshot(self.llm)
        obs = StepObservation(
            step=len(self.history) + 1,
            num_scheduled_tokens=scheduled,
            num_cached_tokens=cached,
            running_ids=[vi.external_request_id(r.request_id) for r in queues["running"]],
            waiting_ids=[vi.external_request_id(r.request_id) for r in queues["waiting"]],
            preempted_ids=preempted,
            finished_ids=[vi.external_request_id(o.request_id) for o in outputs if o.finished],
            block_tables={vi.external_request_id(r.request_id): r.block_ids for r in queues["running"]},
            num_free_blocks=vi.kv_cache_snapshot(self.llm).num_free_blocks,
            seconds=seconds,
        )
        self.history.append(obs)
        return obs

    def has_unfinished_requests(self) -> bool:
        return self.llm.llm_engine.has_unfinished_requests()

    def run(self, max_steps: int = 10_000, on_step: Callable[[StepObservation], None] | None = None) -> None:
        """Step until every request finished (or `max_steps`), calling `on_step` after each step."""
        for _ in range(max_steps):
            if not self.has_unfinished_requests():
                return
            obs = self.step()
            if on_step:
                on_step(obs)

    def describe(self, obs: StepObservation) -> str:
        granted = ", ".join(
            f"{rid}:{n}" + (f" (+{obs.num_cached_tokens[rid]} cached)" if rid in obs.num_cached_tokens else "")
            for rid, n in obs.num_scheduled_tokens.items()) or "-"
        line = (f"step {obs.step:3d}  scheduled [{granted}]  running={obs.running_ids} "
                f"waiting={obs.waiting_ids} free_blocks={obs.num_free_blocks}")
        if obs.preempted_ids:
            line += f"  PREEMPTED={obs.preempted_ids}"
        if obs.finished_ids:
            line += f"  finished={obs.finished_ids}"
        return line
