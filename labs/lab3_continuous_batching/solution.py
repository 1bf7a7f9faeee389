"""Reference solution for labs/lab3_continuous_batching/exercise.py: vLLM v1's token-budget scheduler.

A from-scratch copy of what vLLM 0.32.0's `Scheduler` (vllm/v1/core/sched/scheduler.py) does in
the plain case: FCFS policy, no speculative decoding, LoRA, structured output, KV connectors,
encoder inputs or async scheduling. The graded tests replay request traces through this and
through vLLM's real Scheduler and compare every step, so every rule below is vLLM's.

The one idea: there are no prefill and decode phases. A request has `num_tokens` (prompt +
output so far) and `num_computed_tokens` (tokens whose K/V are in the cache). Each step hands
out a budget of `max_num_batched_tokens` tokens so that requests catch up: a prompt that does
not fit in the budget is split over several steps (chunked prefill), a decode is a request one
token behind, and both share one batch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from labs.core.mini.request import Request, RequestStatus

if TYPE_CHECKING:  # Lab 2's block manager, as a type only: the engine passes in whichever it was built with
    from labs.lab2_paged_attention.solution_kv_cache import KVCacheBlock, KVCacheManager


@dataclass
class SchedulerOutput:
    """What the model runs this step.

    Attributes:
        num_scheduled_tokens: request_id -> tokens to compute this step, in schedule order
            (running requests first, then the ones admitted from the waiting queue).
        scheduled_new_req_ids: requests admitted from the waiting queue this step, new or resumed
            after a preemption: both start from an empty block table. (vLLM's SchedulerOutput
            lists resumed ones apart, in `scheduled_cached_reqs.resumed_req_ids`, because its
            model runner keeps some per-request state across a preemption.)
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

        Returns:
            The batch. `num_computed_tokens` moves forward in `update_from_output` (vLLM already
            moves it at the end of `schedule()`, so that with async scheduling the next step can
            be planned before this one's output arrives; its SchedulerOutput carries the old
            values to the model runner. Run synchronously, the two are indistinguishable.)
        """
        num_scheduled_tokens: dict[str, int] = {}
        scheduled_new_req_ids: list[str] = []
        preempted_req_ids: list[str] = []
        token_budget = self.max_num_batched_tokens
        # The cap keeps one long prefill from starving the others; a request that is alone
        # starves nobody, so vLLM lifts the cap then.
        num_unfinished = len(self.running) + len(self.waiting)
        long_prefill_token_threshold = self.long_prefill_token_threshold if num_unfinished > 1 else 0

        # 1. RUNNING requests, oldest first: decodes and unfinished prefills alike.
        req_index = 0
        while req_index < len(self.running) and token_budget > 0:
            request = self.running[req_index]
            num_new_tokens = self._cap(request.num_tokens - request.num_computed_tokens,
                                       long_prefill_token_threshold, token_budget)
            while (new_blocks := self.kv_cache_manager.allocate_slots(request, num_new_tokens)) is None:
                # Out of KV blocks: free the newest running request's blocks (under FCFS it has the
                # lowest priority) and retry. Only requests after this one can be the newest, so
                # nothing already scheduled this step is ever taken back.
                preempted_req = self.running.pop()
                self._preempt(preempted_req)
                preempted_req_ids.append(preempted_req.request_id)
                if preempted_req is request:
                    break  # it was the newest itself: nobody left to take blocks from
            if new_blocks is None:
                break
            num_scheduled_tokens[request.request_id] = num_new_tokens
            token_budget -= num_new_tokens
            req_index += 1

        # 2. WAITING requests, in order, while there is budget and a free seat. Not after a
        # preemption: blocks just freed for a running request must not go to a new one. (Here
        # the preempted request heads the queue and could not pass the whole-request check
        # anyway; the rule matters with priority scheduling or without that check.)
        while (not preempted_req_ids and self.waiting and token_budget > 0
               and len(self.running) < self.max_num_seqs):
            request = self.waiting[0]
            # Preemption reset num_computed_tokens to 0, so a resumed request looks its tokens
            # (prompt and outputs so far) up in the prefix cache like a new one.
            computed_blocks, num_computed_tokens = self.kv_cache_manager.get_computed_blocks(request)
            num_new_tokens = self._cap(request.num_tokens - num_computed_tokens,
                                       long_prefill_token_threshold, token_budget)
            if not self._whole_request_fits(request, computed_blocks):
                break  # strict FCFS: nobody may overtake the head of the queue
            if self.kv_cache_manager.allocate_slots(request, num_new_tokens, computed_blocks) is None:
                break
            self.waiting.popleft()
            self.running.append(request)
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_computed_tokens
            scheduled_new_req_ids.append(request.request_id)
            num_scheduled_tokens[request.request_id] = num_new_tokens
            token_budget -= num_new_tokens

        return SchedulerOutput(num_scheduled_tokens, scheduled_new_req_ids, preempted_req_ids,
                               sum(num_scheduled_tokens.values()))

    @staticmethod
    def _cap(num_new_tokens: int, long_prefill_token_threshold: int, token_budget: int) -> int:
        """Tokens a request gets: what it lacks, at most the threshold (if > 0), at most the budget."""
        if 0 < long_prefill_token_threshold < num_new_tokens:
            num_new_tokens = long_prefill_token_threshold
        return min(num_new_tokens, token_budget)

    def _whole_request_fits(self, request: Request, computed_blocks: list[KVCacheBlock]) -> bool:
        """Whether the free blocks could hold all of the request's tokens, not just this chunk.

        vLLM's admission check (SchedulerConfig.scheduler_reserve_full_isl, on by default):
        admitting a prompt whose later chunks cannot fit would only lead to preemptions. A
        prefix hit on a free cached block takes that block out of the free queue, so it counts.
        """
        block_size = self.kv_cache_manager.block_size
        num_blocks = -(-request.num_tokens // block_size)  # ceil
        num_new_blocks = max(num_blocks - len(computed_blocks), 0)
        num_evictable_blocks = sum(block.ref_cnt == 0 for block in computed_blocks)
        return num_new_blocks + num_evictable_blocks <= self.kv_cache_manager.get_num_free_blocks()

    def _preempt(self, request: Request) -> None:
        """Give up a running request's blocks; it recomputes everything when it is resumed.

        Recomputation (not swapping K/V out to CPU memory) is what vLLM v1 does; the prefix
        cache often makes it cheap, since the freed blocks stay cached until reused.
        """
        self.kv_cache_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        self.waiting.appendleft(request)  # first in line again: it is older than any waiting one

    def update_from_output(self, scheduler_output: SchedulerOutput, sampled_token_ids: dict[str, list[int]],
                           eos_token_id: int | None = None) -> list[Request]:
        """Record what the model computed and sampled, and retire finished requests.

        Args:
            scheduler_output: the batch that ran.
            sampled_token_ids: request_id -> tokens sampled for it (one per step here).
            eos_token_id: a request that samples it stops (FINISHED_STOPPED).

        Returns:
            The requests that finished this step, in batch order; their blocks are freed.
        """
        finished: list[Request] = []
        for request_id, num_new_tokens in scheduler_output.num_scheduled_tokens.items():
            request = self.requests[request_id]
            request.num_computed_tokens += num_new_tokens
            if request.num_computed_tokens < request.num_tokens:
                continue  # a prefill chunk short of the prompt's end: its sampled token is meaningless
            for token_id in sampled_token_ids.get(request_id, []):
                request.output_token_ids.append(token_id)
                if self._check_stop(request, token_id, eos_token_id):
                    break
            if request.is_finished:
                # Freed in batch order, each request's blocks last-first (see KVCacheManager.free):
                # this order decides which cached blocks are evicted first later.
                self.kv_cache_manager.free(request)
                del self.requests[request_id]
                finished.append(request)
        self.running = [request for request in self.running if not request.is_finished]
        return finished

    @staticmethod
    def _check_stop(request: Request, token_id: int, eos_token_id: int | None) -> bool:
        """vLLM's check_stop, in its order: EOS first, then length.

        (vLLM also stops at max_model_len and on stop strings/tokens; not modelled here.)
        """
        if token_id == eos_token_id:
            request.status = RequestStatus.FINISHED_STOPPED
        elif request.num_output_tokens >= request.max_tokens:
            request.status = RequestStatus.FINISHED_LENGTH_CAPPED
        return request.is_finished
