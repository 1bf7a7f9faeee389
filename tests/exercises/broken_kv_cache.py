"""A deliberately wrong Lab 2 block manager: `labs.your_engine` must name where its outputs go wrong.

Select it as the engine's block manager through the switch:
    LABS_ENGINE=lab2_kv_cache=tests.exercises.broken_kv_cache
    python -m labs.your_engine --parts lab2_kv_cache=tests.exercises.broken_kv_cache

The reference, except for one allocation: the `WRONG_AT`-th request to be given blocks for its
prompt gets, as its first block, the first block of the request allocated just before it (still
running) instead of a free one: two block tables point at one block. Both prefills write their
K/V there, so one of the two requests decodes over the other one's prompt. The bookkeeping
stays consistent (the shared block's reference count is taken twice, the unused fresh block goes
back to the pool), so nothing crashes: only the tokens tell. The two requests are announced on
stderr, for the test to check the report against.
"""

from __future__ import annotations

import sys

from labs.core.mini.request import Request
from labs.lab2_paged_attention.solution_kv_cache import KVCacheBlock, KVCacheManager as _ReferenceManager

__all__ = ["KVCacheManager", "WRONG_AT"]

WRONG_AT = 2  # which prompt allocation goes wrong (the 1st has no earlier request to collide with)


class KVCacheManager(_ReferenceManager):
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        super().__init__(num_blocks, block_size, enable_caching)
        self.num_prompt_allocations = 0

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       new_computed_blocks: list[KVCacheBlock] | None = None) -> list[KVCacheBlock] | None:
        first_allocation = request.request_id not in self.req_to_blocks
        new_blocks = super().allocate_slots(request, num_new_tokens, new_computed_blocks)
        if not new_blocks or not first_allocation or new_computed_blocks:
            return new_blocks
        self.num_prompt_allocations += 1
        others = [r for r in self.req_to_blocks if r != request.request_id and self.req_to_blocks[r]]
        if self.num_prompt_allocations != WRONG_AT or not others:
            return new_blocks
        req_blocks = self.req_to_blocks[request.request_id]
        fresh, wrong = req_blocks[0], self.req_to_blocks[others[-1]][0]
        req_blocks[0] = wrong  # the wrong block: another running request's first one
        wrong.ref_cnt += 1
        self.block_pool.free_blocks([fresh])
        print(f"broken_kv_cache: request {request.request_id} got block {wrong.block_id} of request {others[-1]} "
              f"instead of block {fresh.block_id}", file=sys.stderr, flush=True)
        return [wrong, *new_blocks[1:]]
