"""Lab 2 exercises: build vLLM's paged KV cache bookkeeping (block pool + KV cache manager).

vLLM stores K/V in fixed-size blocks of `block_size` tokens. The KV cache manager decides which
blocks each request uses; the block pool hands out free blocks and remembers full blocks by a
hash of their prefix, so a request that starts like an earlier one reuses its K/V (automatic
prefix caching). You rebuild both for one group of full-attention layers, as in vLLM 0.32.0
(vllm/v1/core/block_pool.py, kv_cache_manager.py, single_type_kv_cache_manager.py).

Fill in every function that raises NotImplementedError, then run `make grade LAB=2`. The tests
(tests/exercises/test_lab2_kv_cache.py) replay request traces through your manager and through
vLLM's real one and compare the block ids after every operation: vLLM's choices are the answer.

Read in this order: hash_block_tokens, BlockPool (get_new_blocks, touch, free_blocks), then
KVCacheManager (get_computed_blocks, allocate_slots, free).
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from labs.core.mini.request import Request

# Stands in for the parent of a request's first block (vLLM derives its NONE_HASH from a seed).
NONE_HASH = 0


def hash_block_tokens(parent_block_hash: int | None, block_token_ids: Sequence[int]) -> int:
    """Hash one full block *and everything before it*, by chaining in the parent's hash.

    A block's K/V depend on every earlier token, so two blocks holding the same tokens are
    interchangeable only if their whole prefixes match. If the hash folds in the parent's hash,
    equal hashes mean equal prefixes, and one dict lookup per block finds a cached prefix.

    Hint: Python's `hash()` of a tuple works (vLLM hashes the same kind of tuple with sha256).
    Use NONE_HASH as the parent of the first block. Lists are not hashable: make a tuple.

    Args:
        parent_block_hash: hash of the previous block of the request, None for the first block.
        block_token_ids: the block_size token ids of this block.

    Returns:
        The block's hash.
    """
    raise NotImplementedError("Exercise 1: a chained block hash")


def update_block_hashes(request: Request, block_size: int) -> None:
    """Extend `request.block_hashes` to cover every full block of its tokens (given).

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

    The free queue holds every block with ref_cnt 0, cached or not, head = handed out next.
    It is an OrderedDict block_id -> block, which is a doubly linked list:
        pop the head:          self.free_block_queue.popitem(last=False)   -> (block_id, block)
        append at the tail:    self.free_block_queue[block.block_id] = block
        move to the head:      self.free_block_queue.move_to_end(block.block_id, last=False)
        remove from anywhere:  del self.free_block_queue[block.block_id]
    """

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        """Args:
            num_blocks: blocks in the pool, including the null block.
            enable_caching: keep full blocks findable by hash (automatic prefix caching).
        """
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(block_id) for block_id in range(num_blocks)]
        self.free_block_queue: OrderedDict[int, KVCacheBlock] = OrderedDict(
            (block.block_id, block) for block in self.blocks)
        # block_hash -> {block_id: block}. Equal full blocks are not de-duplicated (a request's
        # block ids never change once allocated), so one hash may map to several blocks.
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
        """Pop `num_blocks` blocks from the head of the free queue, each with ref_cnt 1.

        Hints:
        - Raise ValueError if there are fewer free blocks than asked for.
        - A popped block may still be cached (free but holding a prefix): its K/V are about to
          be overwritten, so with caching enabled it must leave the prefix cache
          (`self._maybe_evict_cached_block(block)`).
        """
        raise NotImplementedError("Exercise 2: hand out blocks from the free queue's head")

    def _maybe_evict_cached_block(self, block: KVCacheBlock) -> None:
        """Remove `block` from the prefix cache and forget its hash (given)."""
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
        """Take a reference to each of `blocks` (prefix-cache hits of a request being scheduled).

        Hint: a hit block with ref_cnt 0 is sitting in the free queue; it must leave it (without
        losing its hash) or a later get_new_blocks would hand it out under the request's feet.
        Never touch the queue for the null block.
        """
        raise NotImplementedError("Exercise 3: touch prefix-hit blocks")

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference to each block; blocks nobody uses any more go back to the free queue.

        `ordered_blocks` lists the blocks in the order they should be reused. vLLM 0.32.0 puts
        - cached blocks (have a block_hash, caching enabled) at the *tail*, in this order: they
          stay reusable by prefix hits as long as possible, and the least recently used is
          evicted first (LRU);
        - uncached blocks, which no prefix hit can ever reuse, at the *head*, in this order (the
          first of them at the very head): they are handed out again first.

        Hint: collect the two kinds in two lists first, then insert them. The null block is never
        freed.
        """
        raise NotImplementedError("Exercise 4: return blocks to the free queue")

    def cache_full_blocks(self, request: Request, blocks: Sequence[KVCacheBlock], num_cached_blocks: int,
                          num_full_blocks: int, block_size: int) -> None:
        """Make `blocks[num_cached_blocks:num_full_blocks]` findable by their prefix hash (given).

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
    """

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        """Args:
            num_blocks: blocks in the pool, including the null block.
            block_size: tokens per block.
            enable_caching: automatic prefix caching on/off.
        """
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

        Hints:
        - Nothing is cached when prefix caching is disabled: ([], 0).
        - `update_block_hashes(request, self.block_size)`, then look the hashes up in order with
          `self.block_pool.get_cached_block` and stop at the first miss (why is it safe to stop?).
        - Never hit the whole request: the model must run on at least its last token to produce
          the next token's logits. Only blocks that end at or before token `num_tokens - 1` count.
        - Do not touch the blocks here: `allocate_slots` takes the references.

        Returns:
            (blocks, num_computed_tokens) with num_computed_tokens = len(blocks) * block_size.
        """
        raise NotImplementedError("Exercise 5: prefix-cache lookup")

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       new_computed_blocks: list[KVCacheBlock] | None = None) -> list[KVCacheBlock] | None:
        """Give the request room for `num_new_tokens` more tokens after its computed ones.

        Steps (vLLM's order matters):
        1. Tokens that need a slot: request.num_computed_tokens + len(new_computed_blocks) *
           block_size + num_new_tokens; blocks needed = ceil(that / block_size). New blocks =
           needed - blocks the request already has - len(new_computed_blocks) (at least 0).
        2. Check room *before changing anything*: new blocks + hit blocks with ref_cnt 0 (touching
           takes them out of the free queue too) must not exceed the free blocks; else None.
        3. Touch the hits and append them to the request's blocks (and record them as cached),
           *then* get the new blocks, so the hits cannot be evicted for this very request.
        4. With caching on, cache the blocks that are now full: full = min(tokens that need a
           slot, request.num_tokens) // block_size (tokens scheduled now count, samples yet to
           come do not); use `update_block_hashes`, `self.num_cached_block` and
           `self.block_pool.cache_full_blocks`.

        Args:
            request: the request; `request.num_computed_tokens` tokens already have K/V here.
            num_new_tokens: tokens scheduled this step (a prefill chunk, or 1 to decode).
            new_computed_blocks: prefix-cache hits from `get_computed_blocks` (first allocation).

        Returns:
            The newly allocated blocks (maybe none), or None if the pool has too few free blocks,
            in which case nothing changed.
        """
        raise NotImplementedError("Exercise 6: allocate slots")

    def free(self, request: Request) -> None:
        """Release a finished or preempted request's blocks.

        Hint: forget the request's bookkeeping and free its blocks *last block first*: cached
        blocks join the free queue's tail in that order, so a request's tail blocks (longer
        prefixes, the least likely to be shared) are evicted before its head. A request that
        never got blocks is fine to free.
        """
        raise NotImplementedError("Exercise 7: free a request")
