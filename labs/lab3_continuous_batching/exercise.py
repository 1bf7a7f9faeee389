"""Lab 3 exercise: vLLM v1's scheduler, which shares a token budget between prefills and decodes.

Fill in `Scheduler.schedule` and `Scheduler.update_from_output`, then run `make grade LAB=3`.
The tests (tests/exercises/test_lab3_continuous_batching.py) replay request traces through your scheduler
and through vLLM's real one, step by step, and show the first step where they differ.

The one idea: there are no prefill and decode phases. A request has `num_tokens` (prompt +
output so far) and `num_computed_tokens` (tokens whose K/V are in the cache). Each step hands
out a budget of `max_num_batched_tokens` tokens so that requests catch up: a prompt longer
than the budget is split over several steps (chunked prefill), a decode is a request that is
one token behind, and both share one batch.

Your scheduler gets a KV cache manager (Lab 2's reference, `labs/lab2_paged_attention/solution_kv_cache.py`):
    get_computed_blocks(request) -> (blocks, num_computed_tokens)   prefix-cache hits
    allocate_slots(request, num_new_tokens, new_computed_blocks=None) -> new blocks, or None if full
    free(request)                                                    give all its blocks back
    get_num_free_blocks(), block_size
The real thing to read: vllm/v1/core/sched/scheduler.py, `Scheduler.schedule` (long, but skip
everything about spec decode, LoRA, encoders, connectors, mamba, async) and `update_from_output`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from labs.core.mini.request import Request, RequestStatus  # noqa: F401  (you will need RequestStatus)

if TYPE_CHECKING:  # Lab 2's block manager, as a type only: the engine passes in whichever it was built with
    from labs.lab2_paged_attention.solution_kv_cache import KVCacheManager


@dataclass
class SchedulerOutput:
    """What the model runs this step.

    Attributes:
        num_scheduled_tokens: request_id -> tokens to compute this step, in schedule order
            (running requests first, then the ones admitted from the waiting queue).
        scheduled_new_req_ids: requests admitted from the waiting queue this step, new or resumed
            after a preemption.
        preempted_req_ids: requests preempted this step, newest first.
        total_num_scheduled_tokens: sum of `num_scheduled_tokens`, at most max_num_batched_tokens.
    """

    num_scheduled_tokens: dict[str, int]
    scheduled_new_req_ids: list[str]
    preempted_req_ids: list[str]
    total_num_scheduled_tokens: int


class Scheduler:
    """Decides, every step, which requests run and how many tokens each computes.

    Attributes:
        running: requests holding KV blocks, oldest first (the order they were admitted).
        waiting: requests without KV blocks: new ones at the back, preempted ones at the front.
    """

    def __init__(self, kv_cache_manager: KVCacheManager, max_num_seqs: int, max_num_batched_tokens: int,
                 long_prefill_token_threshold: int = 0) -> None:
        """Args:
            kv_cache_manager: owns the KV blocks; `allocate_slots` returning None means "full".
            max_num_seqs: most requests in `running` at once.
            max_num_batched_tokens: the token budget of one step, all requests together.
            long_prefill_token_threshold: if > 0, the most tokens one request gets per step, so
                that one long prompt cannot take the whole budget from the others.
        """
        self.kv_cache_manager = kv_cache_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.long_prefill_token_threshold = long_prefill_token_threshold
        self.requests: dict[str, Request] = {}  # every unfinished request, by id
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    def add_request(self, request: Request) -> None:
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.running or self.waiting)

    def schedule(self) -> SchedulerOutput:
        """Pick this step's batch: running requests first, then admit waiting ones.

        1. RUNNING requests, in order, while budget is left. Each gets
           `num_tokens - num_computed_tokens` tokens, at most `long_prefill_token_threshold` (if
           > 0), at most the remaining budget. Get slots with `allocate_slots`. If it returns
           None, preempt the NEWEST running request (the last one: under FCFS it matters least):
           free its blocks, set it PREEMPTED with num_computed_tokens 0, put it at the FRONT of
           `waiting`; then retry. If the request you preempted is the current one, stop step 1.
        2. WAITING requests, in order, only if step 1 preempted nobody, while there is budget
           and `len(running) < max_num_seqs`: look up prefix-cache hits (`get_computed_blocks`),
           give it the rest of its tokens (same caps as above), allocate, move it to `running`
           (status RUNNING, num_computed_tokens = the cached tokens). If it cannot get blocks,
           stop: nobody may overtake the head of the queue.

        Hints (each is something vLLM 0.32.0 does and the tests check):
        - The threshold protects other requests from one long prompt. If only one request is
          unfinished (running + waiting) at the start of the step, vLLM does not apply it.
        - Before admitting a waiting request, vLLM checks that the free blocks could hold ALL its
          tokens, not just this step's chunk (`SchedulerConfig.scheduler_reserve_full_isl`):
          blocks needed = ceil(num_tokens / block_size) - len(cached blocks), plus the cached
          blocks nobody uses now (ref_cnt == 0: a hit takes them out of the free queue).
        - Leave `num_computed_tokens` of scheduled requests alone here: `update_from_output`
          moves it forward.

        Returns:
            The batch as a SchedulerOutput.
        """
        raise NotImplementedError("Exercise 1: schedule running requests, then waiting ones")

    def update_from_output(self, scheduler_output: SchedulerOutput, sampled_token_ids: dict[str, list[int]],
                           eos_token_id: int | None = None) -> list[Request]:
        """Record what the model computed and sampled, and retire finished requests.

        For every request of the batch, in batch order: add its scheduled tokens to
        `num_computed_tokens`. If that still falls short of `num_tokens`, it ran a prefill chunk
        that did not reach the end of the prompt: ignore its sampled token. Otherwise append its
        sampled tokens to `output_token_ids`; after each one, stop the request if it is
        `eos_token_id` (status FINISHED_STOPPED) or if it now has `max_tokens` outputs
        (FINISHED_LENGTH_CAPPED). Free a finished request's blocks and forget it; in the end,
        drop finished requests from `running`.

        Args:
            scheduler_output: the batch that ran.
            sampled_token_ids: request_id -> tokens sampled for it (one per step here).
            eos_token_id: a request that samples it stops.

        Returns:
            The requests that finished this step, in batch order.
        """
        raise NotImplementedError("Exercise 2: advance requests, append tokens, retire finished ones")
