"""Reference solution for labs/lab2_paged_attention/exercise_kv_cache.py: vLLM's paged KV cache bookkeeping.

A from-scratch copy of what vLLM 0.32.0 does for one KV cache group of full attention
(vllm/v1/core/block_pool.py, kv_cache_manager.py, single_type_kv_cache_manager.py and
kv_cache_utils.FreeKVCacheBlockQueue), small enough to read top to bottom. The graded tests
replay request traces through this and through vLLM's real KVCacheManager and compare block
ids after every operation, so every ordering rule below is vLLM's, not a choice of ours.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from labs.core.mini.request import Request

# Stands in for the parent of a request's first block. vLLM derives its NONE_HASH from a seed
# (PYTHONHASHSEED or a random one per process); any fixed value gives the same chaining.
NONE_HASH = 0


def hash_block_tokens(parent_block_hash: int | None, block_token_ids: Sequence[int]) -> int:
    """Hash one full block *and everything before it*, by chaining in the parent's hash.

    Why chained: a block's K/V depend on every earlier token, so two blocks holding the same
    tokens are interchangeable only if their whole prefixes match. Folding the parent hash in
    makes equal hashes mean equal prefixes, and one dict lookup per block finds a cached prefix.

    Args:
        parent_block_hash: hash of the request's previous block, None for its first block.
        block_token_ids: the block_size token ids of this block.

    Returns:
        Python's hash of (parent, tokens); vLLM takes sha256 (or xxhash) of the same tuple.
    """
    if parent_block_hash is None:
        parent_block_hash = NONE_HASH
    return hash((parent_block_hash, tuple(block_token_ids)))


def update_block_hashes(request: Request, block_size: int) -> None:
    """Extend `request.block_hashes` to cover every full block of its tokens.

    vLLM's Request does this itself when created and whenever a token is appended; the mini
    Request is a plain dataclass, so the KV cache manager calls this before it needs hashes.
    """
    token_ids = request.all_token_ids
    for start in range(len(request.block_hashes) * block_size, len(token_ids) - block_size + 1, block_size):
        parent = request.block_hashes[-1] if request.block_hashes else None
        request.block_hashes.append(hash_block_tokens(parent, token_ids[start:start + block_size]))


@dataclass
class KVCacheBlock:
    """Bookkeeping of one KV cache block (the K/V tensors themselves live in the model runner).

    Attributes:
        block_id: index into the KV cache tensors, 0..num_blocks-1.
        ref_cnt: how many running requests use the block; 0 means it sits in the free queue.
        block_hash: set once the block is full and cached; a free block keeps it (and can be
            reused by a prefix hit) until the pool hands the block out again.
    """

    block_id: int
    ref_cnt: int = 0
    block_hash: int | None = None


class BlockPool:
    """All KV cache blocks: a free queue in eviction order and a prefix cache of full blocks.

    The free queue holds every block with ref_cnt 0, cached or not: a cached free block is
    still reusable by a prefix hit until it reaches the head and is handed out (evicted).
    vLLM keeps it as a hand-made doubly linked list; an OrderedDict is one too (O(1) pop from
    the head, append at the tail, prepend, and removal from the middle when a prefix hit
    revives a free cached block).

    Args:
        num_blocks: blocks in the pool, including the null block.
        enable_caching: keep full blocks findable by hash (automatic prefix caching).
    """

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(block_id) for block_id in range(num_blocks)]
        self.free_block_queue: OrderedDict[int, KVCacheBlock] = OrderedDict(
            (block.block_id, block) for block in self.blocks)
        # block_hash -> {block_id: block}. Equal full blocks are not de-duplicated (vLLM: a
        # request's block ids never change once allocated), so one hash may map to several.
        self.cached_block_hash_to_block: dict[int, dict[int, KVCacheBlock]] = {}
        # Block 0 is a placeholder that is never allocated or freed (vLLM pads block tables
        # with it), so real block ids start at 1 as in vLLM.
        _, self.null_block = self.free_block_queue.popitem(last=False)

    def get_num_free_blocks(self) -> int:
        return len(self.free_block_queue)

    def get_usage(self) -> float:
        """Fraction of usable blocks in use (the null block is not usable), as vLLM reports it."""
        num_usable_blocks = self.num_blocks - 1
        return 1.0 - self.get_num_free_blocks() / num_usable_blocks if num_usable_blocks else 0.0

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        """Pop `num_blocks` blocks from the head of the free queue (least recently used first).

        A popped block that was still cached loses its hash: its K/V will be overwritten.
        """
        if num_blocks > self.get_num_free_blocks():
            raise ValueError(f"Cannot get {num_blocks} free blocks from the pool")
        new_blocks = [self.free_block_queue.popitem(last=False)[1] for _ in range(num_blocks)]
        for block in new_blocks:
            if self.enable_caching:
                self._maybe_evict_cached_block(block)
            assert block.ref_cnt == 0
            block.ref_cnt = 1
        return new_blocks

    def _maybe_evict_cached_block(self, block: KVCacheBlock) -> None:
        if block.block_hash is None:
            return
        same_hash_blocks = self.cached_block_hash_to_block[block.block_hash]
        del same_hash_blocks[block.block_id]
        if not same_hash_blocks:
            del self.cached_block_hash_to_block[block.block_hash]
        block.block_hash = None

    def get_cached_block(self, block_hash: int) -> KVCacheBlock | None:
        """A block holding this prefix, if any (the first one cached when there are several)."""
        same_hash_blocks = self.cached_block_hash_to_block.get(block_hash)
        return next(iter(same_hash_blocks.values())) if same_hash_blocks else None

    def touch(self, blocks: Sequence[KVCacheBlock]) -> None:
        """Take a reference to prefix-hit blocks; a free one leaves the free queue (no eviction)."""
        for block in blocks:
            if block.ref_cnt == 0 and block is not self.null_block:
                del self.free_block_queue[block.block_id]
            block.ref_cnt += 1

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference to each block; blocks nobody uses go back to the free queue.

        `ordered_blocks` lists the blocks in the order they should be reused. Where they go
        (vLLM 0.32.0's policy):
        - cached blocks to the tail, in this order: kept as long as possible for prefix hits,
          least recently used evicted first (LRU);
        - uncached blocks, which no prefix hit can ever reuse, to the head, in this order: handed
          out again first (vLLM: reusing recently touched memory is better for GPU locality).
        """
        reuse_first: list[KVCacheBlock] = []
        reuse_last: list[KVCacheBlock] = []
        for block in ordered_blocks:
            block.ref_cnt -= 1
            if block.ref_cnt == 0 and block is not self.null_block:
                cached = self.enable_caching and block.block_hash is not None
                (reuse_last if cached else reuse_first).append(block)
        for block in reversed(reuse_first):  # the first of them ends up at the head
            self.free_block_queue[block.block_id] = block
            self.free_block_queue.move_to_end(block.block_id, last=False)
        for block in reuse_last:
            self.free_block_queue[block.block_id] = block

    def cache_full_blocks(self, request: Request, blocks: Sequence[KVCacheBlock], num_cached_blocks: int,
                          num_full_blocks: int, block_size: int) -> None:
        """Make `blocks[num_cached_blocks:num_full_blocks]` findable by their prefix hash.

        Args:
            request: owner of the blocks; its `block_hashes` must cover the new full blocks.
            blocks: all blocks of the request, in token order.
            num_cached_blocks: how many of them are already cached.
            num_full_blocks: how many are full (their tokens scheduled) after this step.
            block_size: tokens per block.
        """
        if num_cached_blocks >= num_full_blocks:
            return
        assert len(request.block_hashes) >= num_full_blocks, (
            f"request {request.request_id} has {len(request.block_hashes)} block hashes, "
            f"{num_full_blocks} needed: call update_block_hashes(request, {block_size}) first")
        for block, block_hash in zip(blocks[num_cached_blocks:num_full_blocks],
                                     request.block_hashes[num_cached_blocks:num_full_blocks]):
            block.block_hash = block_hash
            self.cached_block_hash_to_block.setdefault(block_hash, {})[block.block_id] = block


class KVCacheManager:
    """Which blocks each request owns; prefix-cache lookups; allocation for the scheduler.

    The scheduler asks, per request and step: which prompt blocks are already cached
    (`get_computed_blocks`), then for slots for the tokens it schedules (`allocate_slots`,
    None = no room, preempt someone), and `free` when the request finishes or is preempted.

    Args:
        num_blocks: blocks in the pool, including the null block.
        block_size: tokens per block.
        enable_caching: automatic prefix caching on/off.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.block_pool = BlockPool(num_blocks, enable_caching)
        self.req_to_blocks: defaultdict[str, list[KVCacheBlock]] = defaultdict(list)
        # request_id -> how many of its blocks are in the prefix cache already.
        self.num_cached_block: dict[str, int] = {}

    def get_num_free_blocks(self) -> int:
        return self.block_pool.get_num_free_blocks()

    def get_usage(self) -> float:
        return self.block_pool.get_usage()

    def get_block_ids(self, request_id: str) -> list[int]:
        return [block.block_id for block in self.req_to_blocks.get(request_id, [])]

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """The longest run of cached full blocks at the start of the request's tokens.

        Never the whole request: the model must run on at least the last token to produce the
        logits of the next one, so a hit stops before it, which (hits being whole blocks) can
        cost recomputing a whole block. Does not take references: `allocate_slots` does.

        Returns:
            (blocks, num_computed_tokens) with num_computed_tokens = len(blocks) * block_size.
        """
        if not self.enable_caching:
            return [], 0
        update_block_hashes(request, self.block_size)
        max_cache_hit_length = request.num_tokens - 1
        computed_blocks: list[KVCacheBlock] = []
        for block_hash in request.block_hashes[:max_cache_hit_length // self.block_size]:
            cached_block = self.block_pool.get_cached_block(block_hash)
            if cached_block is None:
                break  # chained hashes: after one miss every later block misses too
            computed_blocks.append(cached_block)
        return computed_blocks, len(computed_blocks) * self.block_size

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       new_computed_blocks: list[KVCacheBlock] | None = None) -> list[KVCacheBlock] | None:
        """Give the request room for `num_new_tokens` more tokens after its computed ones.

        Args:
            request: the request; `request.num_computed_tokens` tokens already have K/V here.
            num_new_tokens: tokens scheduled this step (a prefill chunk, or 1 to decode).
            new_computed_blocks: prefix-cache hits from `get_computed_blocks` (first allocation).

        Returns:
            The newly allocated blocks (maybe none), or None if the pool has too few free blocks,
            in which case nothing changed.
        """
        new_computed_blocks = new_computed_blocks or []
        if num_new_tokens == 0 and not new_computed_blocks:
            raise ValueError("num_new_tokens must be greater than 0")
        req_blocks = self.req_to_blocks.get(request.request_id, [])
        num_computed_tokens = request.num_computed_tokens + len(new_computed_blocks) * self.block_size
        num_tokens_need_slot = num_computed_tokens + num_new_tokens
        num_required_blocks = -(-num_tokens_need_slot // self.block_size)
        num_new_blocks = max(num_required_blocks - len(req_blocks) - len(new_computed_blocks), 0)
        # A hit on a free cached block takes it out of the free queue too.
        num_evictable_blocks = sum(block.ref_cnt == 0 for block in new_computed_blocks)
        if num_new_blocks + num_evictable_blocks > self.block_pool.get_num_free_blocks():
            return None

        req_blocks = self.req_to_blocks[request.request_id]
        if new_computed_blocks:
            # Touch before get_new_blocks, or the hits could be evicted to make room for this very
            # request.
            self.block_pool.touch(new_computed_blocks)
            req_blocks.extend(new_computed_blocks)
            self.num_cached_block[request.request_id] = len(req_blocks)
        new_blocks = self.block_pool.get_new_blocks(num_new_blocks)
        req_blocks.extend(new_blocks)

        if self.enable_caching:
            # Cache blocks as soon as their tokens are scheduled (not yet computed): a request
            # arriving next step can already share them. Output tokens not sampled yet are not
            # in request.num_tokens, hence the min.
            update_block_hashes(request, self.block_size)
            num_full_blocks = min(num_tokens_need_slot, request.num_tokens) // self.block_size
            num_cached_blocks = self.num_cached_block.get(request.request_id, 0)
            self.block_pool.cache_full_blocks(request, req_blocks, num_cached_blocks, num_full_blocks,
                                              self.block_size)
            self.num_cached_block[request.request_id] = max(num_cached_blocks, num_full_blocks)
        return new_blocks

    def free(self, request: Request) -> None:
        """Release a finished or preempted request's blocks, last block first.

        Why reversed: cached blocks join the free queue's tail in this order, so a request's tail
        blocks (the least likely to be shared: longer prefixes) are evicted before its head.
        """
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.num_cached_block.pop(request.request_id, None)
        self.block_pool.free_blocks(reversed(blocks))
