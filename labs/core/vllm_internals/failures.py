"""Lab 10's hooks into vLLM: a worker that can be paused from outside, and vLLM's scheduler under a burst.

Why here: pausing a worker means wrapping a method of vLLM's worker wrapper in vLLM's own worker
process, and counting what a preemption throws away means reading a request the scheduler is
about to preempt; both are internal (vLLM 0.32.0 names below) and move between releases.

- `install_worker_pause` runs in every vLLM process through the workbook's general plugin
  (`labs.core.debug.vllm_workers.register`, registered in pyproject.toml), and does something only
  in a worker (`VllmWorker-<rank>`) when `WORKBOOK_FAULT_PAUSE_FILE` names a file: while that file
  exists and is empty, the worker holds every `execute_model` call (a number in it slows each step instead) (vllm/v1/worker/worker_base.py,
  `WorkerWrapperBase.execute_model`), which is what a stuck GPU kernel or a deadlocked collective
  looks like from outside.
- `run_burst` plays a burst of requests through vLLM's real `Scheduler` (`StandaloneScheduler`,
  no model) and records, at each preemption, the request's `num_computed_tokens` just before
  `Scheduler._preempt_request` resets it to 0 (vllm/v1/core/sched/scheduler.py): vLLM's own
  count of the tokens the recompute pays again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labs.core.vllm_internals.standalone import ScheduledStep, StandaloneScheduler
from labs.core.vllm_internals.workers import worker_process_rank

PAUSE_FILE_ENV = "WORKBOOK_FAULT_PAUSE_FILE"  # a path: while that file exists (empty), vLLM's workers hold each step
PAUSE_POLL_S = 0.2


def _pause_setting(pause_file: Path) -> str | None:
    try:
        return pause_file.read_text().strip()
    except FileNotFoundError:
        return None


def wait_while_paused(pause_file: Path) -> None:
    """Hold this step as `pause_file` says (py-spy shows this frame).

    No file: go on. A number in it: hold the step that many seconds (a slow worker, so requests
    outlast an observer's readings however fast the machine). Empty: hold it as long as the file
    stays empty (the injected hang); removing the file, or writing a number, lets it go.
    """
    setting = _pause_setting(pause_file)
    if setting:
        time.sleep(float(setting))
        return
    while setting == "":
        time.sleep(PAUSE_POLL_S)
        setting = _pause_setting(pause_file)


def install_worker_pause(process_name: str) -> bool:
    """In a vLLM worker process with `WORKBOOK_FAULT_PAUSE_FILE` set: make every step wait on that file.

    Why the worker and `execute_model`: the engine core sends each step to its workers over
    shared memory and waits for the answer (`MultiprocExecutor.execute_model`, timeout
    `VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS`); a worker that never answers is the hang a serving team
    meets, with every process alive and `/health` still 200.

    Args:
        process_name: this process's multiprocessing name (`VllmWorker-0` in a worker).

    Returns:
        True if the pause was installed (this is a worker and the variable is set).
    """
    pause_file = os.environ.get(PAUSE_FILE_ENV)
    if not pause_file or worker_process_rank(process_name) is None:
        return False
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    original = WorkerWrapperBase.execute_model
    if getattr(original, "_workbook_pause", False):
        return True

    def execute_model(self: Any, scheduler_output: Any) -> Any:
        wait_while_paused(Path(pause_file))
        return original(self, scheduler_output)

    execute_model._workbook_pause = True  # type: ignore[attr-defined]
    WorkerWrapperBase.execute_model = execute_model  # type: ignore[method-assign]
    return True


@contextmanager
def record_preemptions(scheduler: Any) -> Iterator[dict[str, list[int]]]:
    """Record, for each preemption of this `Scheduler`, the request's `num_computed_tokens` just before.

    Why wrap `_preempt_request`: it is the one place vLLM 0.32.0 preempts (`schedule()` when a
    running request cannot get a block, and `reset_prefix_cache`), and it zeroes
    `num_computed_tokens`; what the request had computed is what its recompute pays again.
    Only this instance is wrapped, and only inside the block.

    Yields:
        request id (vLLM's internal one) -> tokens thrown away at each of its preemptions.
    """
    lost: dict[str, list[int]] = {}
    original = scheduler._preempt_request

    def preempt(request: Any, *args: Any, **kwargs: Any) -> Any:
        lost.setdefault(request.request_id, []).append(request.num_computed_tokens)
        return original(request, *args, **kwargs)

    scheduler._preempt_request = preempt
    try:
        yield lost
    finally:
        del scheduler._preempt_request  # back to the class's method


@dataclass
class BurstRun:
    """A burst played through vLLM's scheduler, step by step, with vLLM's own preemption counts.

    Attributes:
        steps: what each `Scheduler.schedule()` decided.
        lost_tokens: request id -> `num_computed_tokens` at each of its preemptions, read from the
            request right before `_preempt_request` zeroed it (what the recompute pays again).
        num_preemptions: request id -> `Request.num_preemptions` when it finished (vLLM's counter).
        num_free_blocks: free KV blocks after each step.
    """

    steps: list[ScheduledStep] = field(default_factory=list)
    lost_tokens: dict[str, list[int]] = field(default_factory=dict)
    num_preemptions: dict[str, int] = field(default_factory=dict)
    num_free_blocks: list[int] = field(default_factory=list)

    @property
    def total_preemptions(self) -> int:
        return sum(self.num_preemptions.values())

    @property
    def recomputed_tokens(self) -> int:
        """vLLM's own count of tokens computed twice: all it threw away at preemptions."""
        return sum(sum(v) for v in self.lost_tokens.values())


def run_burst(model_path: str, prompts: dict[str, list[int]], max_tokens: dict[str, int], *, block_size: int,
              num_blocks: int, max_num_seqs: int, max_num_batched_tokens: int, max_model_len: int = 1024,
              max_steps: int = 5000) -> BurstRun:
    """All `prompts` arrive at once; vLLM's real Scheduler serves them, a fake model samples token 5.

    Prefix caching is off: a resumed request then recomputes everything it lost, as the live
    labs' engines are set up, so the tax is exact.

    Args:
        model_path: a local model folder (only its config.json is read).
        prompts: request id -> prompt token ids.
        max_tokens: request id -> outputs it produces (EOS never comes).
        block_size, num_blocks: the KV pool (`num_blocks` includes vLLM's null block 0).
        max_num_seqs, max_num_batched_tokens: the scheduler's limits.

    Returns:
        The steps and vLLM's preemption counts.
    """
    sched = StandaloneScheduler(model_path, block_size=block_size, num_blocks=num_blocks, max_num_seqs=max_num_seqs,
                                max_num_batched_tokens=max_num_batched_tokens, enable_prefix_caching=False,
                                max_model_len=max_model_len)
    run = BurstRun()
    requests = {}
    for request_id, token_ids in prompts.items():
        sched.add_request(request_id, token_ids, max_tokens[request_id])
        requests[request_id] = sched.scheduler.requests[request_id]  # kept: finished ones leave `requests`
    with record_preemptions(sched.scheduler) as lost:
        for _ in range(max_steps):
            if not sched.has_unfinished_requests():
                break
            step = sched.schedule()
            run.steps.append(step)
            sched.update_from_output({rid: [5] for rid in step.num_scheduled_tokens})
            run.num_free_blocks.append(sched.num_free_blocks())
    run.lost_tokens = lost
    run.num_preemptions = {rid: req.num_preemptions for rid, req in requests.items()}
    return run
