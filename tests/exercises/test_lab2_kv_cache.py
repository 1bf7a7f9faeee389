"""Grades Lab 2's block pool and KV cache manager against vLLM's real KVCacheManager.

Differential testing: each trace below (requests arriving, sharing prefixes, decoding, running
out of blocks, being preempted, finishing) is replayed through the implementation under test
and through vLLM's own KVCacheManager, built standalone (no engine, no model; see
labs.core.vllm_internals.make_kv_cache_manager). After every operation both must agree on every live
request's block ids, the number of free blocks, the prefix-cache hit and whether the allocation
succeeded. vLLM is the answer key, so nothing here hard-codes a block id.

Runs the reference by default; `make grade LAB=2` (LABS_GRADE=learner) runs yours.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from labs.core import vllm_internals as vi
from labs.core.grading import load_implementation
from labs.core.mini.request import Request
from labs.lab2_paged_attention import solution_kv_cache as reference


@pytest.fixture(scope="module")
def impl() -> Any:
    return load_implementation("lab2_kv_cache")


# --- Traces ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Add:
    """A new request arrives and is scheduled: prefix-cache lookup, then allocate_slots."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    num_new_tokens: int | None = None  # a prefill chunk; None = the whole rest of the prompt


@dataclass(frozen=True)
class Schedule:
    """Schedule a request again: a waiting one (looks the cache up first) or a prefill chunk."""

    request_id: str
    num_new_tokens: int | None = None


@dataclass(frozen=True)
class Decode:
    """The request sampled `token_id`: append it and allocate a slot for it."""

    request_id: str
    token_id: int


@dataclass(frozen=True)
class Free:
    """The request finished: all its blocks go back."""

    request_id: str


@dataclass(frozen=True)
class Preempt:
    """The scheduler takes the request's blocks back; it will recompute (num_computed_tokens = 0)."""

    request_id: str


Op = Add | Schedule | Decode | Free | Preempt


def tokens(start: int, n: int) -> tuple[int, ...]:
    return tuple(range(start, start + n))


@dataclass(frozen=True)
class Trace:
    name: str
    num_blocks: int  # including the null block
    block_size: int
    ops: tuple[Op, ...]
    enable_caching: bool = True


TRACES = [
    Trace("shared_prefixes", num_blocks=16, block_size=4, ops=(
        Add("a", tokens(0, 10)),                      # blocks for 10 tokens, 2 full ones cached
        Add("b", tokens(0, 8) + (50, 51)),            # shares a's 2 full blocks: 8 hit tokens
        Add("c", tokens(0, 10)),                      # a's exact prompt: still only the full blocks hit
        Add("d", tokens(0, 8)),                       # 8 = 2 full blocks, but never the whole prompt
        Decode("a", 10), Decode("a", 11),             # a's third block fills up and gets cached
        Decode("a", 12),                              # ... and a fourth block is needed
        Add("e", tokens(0, 13)),                      # hits a's decoded block too
        Free("a"), Free("b"), Free("c"), Free("d"), Free("e"),
        Add("f", tokens(0, 12) + (99,)),              # everything freed, but still cached: 12 hit tokens
    )),
    Trace("eviction_and_preemption", num_blocks=6, block_size=4, ops=(
        Add("a", tokens(0, 12)),                      # 3 full blocks, all cached
        Free("a"),                                    # cached blocks go to the free queue's tail
        Add("b", tokens(100, 7)),                     # unused blocks are handed out first
        Add("c", tokens(200, 6)),                     # now a's cached blocks are evicted, tail first
        Add("a2", tokens(0, 12)),                     # a's first block still hits, but no room: None
        Free("b"),                                    # b's uncached tail block goes to the head
        Schedule("a2"),                               # room now: reuses b's blocks
        Add("b2", tokens(100, 7)),                    # b's cached block was evicted: no hit, no room
        Decode("c", 300), Decode("c", 301),           # c fills its second block
        Decode("c", 302),                             # c needs a third block: none free -> None
        Preempt("a2"),                                # the scheduler preempts a2 to make room
        Decode("c", 303),
        Schedule("b2"),
        Preempt("c"), Free("b2"),
        Schedule("c"),                                # resumes with prefix hits on its own blocks
        Schedule("a2"),                               # all its blocks were evicted: no hit, no room
    )),
    Trace("hits_need_room_too", num_blocks=5, block_size=4, ops=(
        Add("a", tokens(0, 8)),                       # 2 full blocks, cached
        Free("a"),                                    # free, but still holding a's prefix
        Add("b", tokens(100, 8)),                     # takes the 2 never-used blocks
        Add("c", tokens(0, 12)),                      # 2 free hits + 1 new block > 2 free blocks: None
        Free("b"),
        Schedule("c"),                                # fits now; evicts b's tail block first
    )),
    Trace("chunked_prefill", num_blocks=12, block_size=4, ops=(
        Add("a", tokens(0, 14), num_new_tokens=5),    # a 14-token prompt in chunks of 5
        Add("b", tokens(0, 14) + (77,)),              # hits only the block a has scheduled so far
        Schedule("a", 5), Schedule("a"),              # the rest of a's prompt
        Decode("a", 14), Decode("a", 15), Decode("a", 16),
        Free("b"),
        Add("c", tokens(0, 16) + (88, 89)),           # hits a's 4 full blocks
        Free("a"), Free("c"),
        Add("d", tokens(0, 16) + tokens(900, 9), num_new_tokens=3),  # a chunk after 16 hit tokens
        Schedule("d", 3),
    )),
    Trace("no_prefix_caching", num_blocks=10, block_size=4, enable_caching=False, ops=(
        Add("a", tokens(0, 10)), Add("b", tokens(0, 10)),  # no sharing without caching
        Decode("a", 10), Decode("a", 11), Decode("a", 12),
        Free("a"),                                     # freed blocks are reused first (LIFO)
        Add("c", tokens(0, 9)),
        Add("d", tokens(0, 20)),                       # too big for what is left: None
        Free("b"), Schedule("d"),
    )),
    Trace("block_size_16", num_blocks=8, block_size=16, ops=(
        Add("system", tokens(0, 40)),                  # a shared "system prompt" of 2.5 blocks
        Add("user1", tokens(0, 32) + tokens(500, 20)),
        Add("user2", tokens(0, 32) + tokens(600, 40)),  # 2 blocks hit, 3 more needed, 2 free: None
        Free("system"), Free("user1"),
        Add("user3", tokens(0, 32) + tokens(500, 16) + (1,)),  # hits user1's 3rd block too
        Add("user4", tokens(700, 40)),                # system's uncached block, then never-used ones
        Free("user3"),
        Add("user5", tokens(0, 33)),                  # user3's uncached tail block is reused first
        Free("user4"),
        Schedule("user2"),                            # waiting since operation 2: room, by evicting
    )),
]


# --- Two backends with one interface: the implementation under test and vLLM -----------------

class ImplBackend:
    """Drives the implementation under test (the exercise's interface)."""

    def __init__(self, impl: Any, trace: Trace) -> None:
        self.manager = impl.KVCacheManager(trace.num_blocks, trace.block_size, trace.enable_caching)
        self.requests: dict[str, Request] = {}

    def add(self, request_id: str, prompt_token_ids: list[int]) -> None:
        self.requests[request_id] = Request(request_id, list(prompt_token_ids))

    def get_computed_blocks(self, request_id: str) -> tuple[Any, int]:
        return self.manager.get_computed_blocks(self.requests[request_id])

    def allocate_slots(self, request_id: str, num_new_tokens: int, hit: tuple[Any, int] | None) -> bool:
        computed_blocks = list(hit[0]) if hit else None
        return self.manager.allocate_slots(self.requests[request_id], num_new_tokens, computed_blocks) is not None

    def append_token(self, request_id: str, token_id: int) -> None:
        self.requests[request_id].output_token_ids.append(token_id)

    def free(self, request_id: str) -> None:
        self.manager.free(self.requests[request_id])

    def request(self, request_id: str) -> Any:
        return self.requests[request_id]

    def block_ids(self, request_id: str) -> list[int]:
        return list(self.manager.get_block_ids(request_id))

    def num_free_blocks(self) -> int:
        return self.manager.get_num_free_blocks()


class VllmBackend:
    """Drives vLLM's real KVCacheManager the way vLLM's scheduler calls it."""

    def __init__(self, trace: Trace) -> None:
        self.block_size = trace.block_size
        self.manager = vi.make_kv_cache_manager(trace.num_blocks, trace.block_size, trace.enable_caching)
        self.requests: dict[str, Any] = {}

    def add(self, request_id: str, prompt_token_ids: list[int]) -> None:
        self.requests[request_id] = vi.make_vllm_request(request_id, prompt_token_ids, self.block_size)

    def get_computed_blocks(self, request_id: str) -> tuple[Any, int]:
        blocks, num_hit_tokens, _ = self.manager.get_computed_blocks(self.requests[request_id])
        return blocks, num_hit_tokens

    def allocate_slots(self, request_id: str, num_new_tokens: int, hit: tuple[Any, int] | None) -> bool:
        request = self.requests[request_id]
        if hit is None:
            return self.manager.allocate_slots(request, num_new_tokens) is not None
        return self.manager.allocate_slots(request, num_new_tokens, hit[1], hit[0]) is not None

    def append_token(self, request_id: str, token_id: int) -> None:
        self.requests[request_id].append_output_token_ids(token_id)

    def free(self, request_id: str) -> None:
        self.manager.free(self.requests[request_id])

    def request(self, request_id: str) -> Any:
        return self.requests[request_id]

    def block_ids(self, request_id: str) -> list[int]:
        return list(self.manager.get_block_ids(request_id)[0])

    def num_free_blocks(self) -> int:
        return self.manager.block_pool.get_num_free_blocks()


Backend = ImplBackend | VllmBackend


def apply(backend: Backend, op: Op, live: set[str], waiting: set[str]) -> dict[str, Any]:
    """Apply one operation, playing the scheduler's part; returns what it observed.

    `live` (requests holding blocks) and `waiting` (added or preempted, not holding blocks)
    are decided from vLLM's run and shared, so both backends are asked the same questions.
    """
    seen: dict[str, Any] = {}
    if isinstance(op, Add):
        backend.add(op.request_id, list(op.prompt_token_ids))
    if isinstance(op, (Add, Schedule)):
        request = backend.request(op.request_id)
        hit = None
        if op.request_id not in live:  # waiting: look the prefix cache up first, as vLLM's scheduler does
            hit = backend.get_computed_blocks(op.request_id)
            seen["hit tokens"] = hit[1]
        num_computed_tokens = request.num_computed_tokens + (hit[1] if hit else 0)
        num_remaining = request.num_tokens - num_computed_tokens
        num_new_tokens = num_remaining if op.num_new_tokens is None else min(op.num_new_tokens, num_remaining)
        allocated = backend.allocate_slots(op.request_id, num_new_tokens, hit)
        seen["allocated"] = allocated
        if allocated:
            request.num_computed_tokens = num_computed_tokens + num_new_tokens
    elif isinstance(op, Decode):
        backend.append_token(op.request_id, op.token_id)
        allocated = backend.allocate_slots(op.request_id, 1, None)
        seen["allocated"] = allocated
        if allocated:
            backend.request(op.request_id).num_computed_tokens += 1
    elif isinstance(op, (Free, Preempt)):
        backend.free(op.request_id)
        backend.request(op.request_id).num_computed_tokens = 0
    seen["free blocks"] = backend.num_free_blocks()
    for request_id in sorted(live | waiting | {op.request_id}):
        seen[f"blocks of {request_id}"] = backend.block_ids(request_id)
    return seen


def update_queues(op: Op, seen: dict[str, Any], live: set[str], waiting: set[str]) -> None:
    if isinstance(op, (Add, Schedule)):
        if seen["allocated"]:
            live.add(op.request_id)
            waiting.discard(op.request_id)
        elif op.request_id not in live:  # a running request keeps its blocks until preempted
            waiting.add(op.request_id)
    elif isinstance(op, Free):
        live.discard(op.request_id)
        waiting.discard(op.request_id)
    elif isinstance(op, Preempt):
        live.discard(op.request_id)
        waiting.add(op.request_id)


def diff_table(expected: dict[str, Any], got: dict[str, Any]) -> str:
    """Two columns, vLLM's values and yours, with the differing rows marked."""
    keys = list(dict.fromkeys([*expected, *got]))
    width = max(len(k) for k in keys)
    col = max(len("vLLM (expected)"), *(len(str(expected.get(k, "-"))) for k in keys))
    lines = [f"  {'':<{width}}  {'vLLM (expected)':<{col}}  yours"]
    for key in keys:
        want, have = expected.get(key, "-"), got.get(key, "-")
        mark = "   <-- differs" if want != have else ""
        lines.append(f"  {key:<{width}}  {str(want):<{col}}  {have}{mark}")
    return "\n".join(lines)


WHAT_THE_SCHEDULER_CALLS = {
    Add: "get_computed_blocks + allocate_slots",
    Schedule: "allocate_slots, after get_computed_blocks if waiting",
    Decode: "append the token, allocate_slots(request, 1)",
    Free: "free",
    Preempt: "free, num_computed_tokens = 0",
}


def describe(op: Op) -> str:
    return f"{op}  [{WHAT_THE_SCHEDULER_CALLS[type(op)]}]"


def replay_and_compare(impl: Any, trace: Trace) -> None:
    """Replay `trace` through `impl` and vLLM; at the first mismatch, fail with a readable diff."""
    mine, vllm = ImplBackend(impl, trace), VllmBackend(trace)
    live: set[str] = set()
    waiting: set[str] = set()
    history: list[str] = []
    for index, op in enumerate(trace.ops):
        where = (f"trace {trace.name!r} (num_blocks={trace.num_blocks}, block_size={trace.block_size}, "
                 f"enable_caching={trace.enable_caching}), operation {index}: {describe(op)}")
        done = "\n".join(history[-6:]) or "  (none)"
        expected = apply(vllm, op, live, waiting)
        try:
            got = apply(mine, op, live, waiting)
        except NotImplementedError:
            raise
        except Exception as exc:
            raise AssertionError(f"{where}\nraised {exc!r}\nthe operations before it matched vLLM:\n{done}") from exc
        if got != expected:
            raise AssertionError(f"{where}\n{diff_table(expected, got)}\n"
                                 f"the operations before it (last 6 shown) matched vLLM:\n{done}")
        update_queues(op, expected, live, waiting)
        history.append(f"  {index}: {op}")


@pytest.mark.parametrize("trace", TRACES, ids=[t.name for t in TRACES])
def test_kv_cache_manager_matches_vllm(impl: Any, trace: Trace) -> None:
    replay_and_compare(impl, trace)


# --- The hash and the block pool on their own --------------------------------------------------

def test_hash_block_tokens_is_chained(impl: Any) -> None:
    h = impl.hash_block_tokens
    first = h(None, [1, 2, 3, 4])
    assert first == h(None, (1, 2, 3, 4)), "the same block must hash the same (list or tuple)"
    assert first != h(None, [1, 2, 3, 5]), "different tokens must hash differently"
    assert h(first, [5, 6, 7, 8]) == h(h(None, [1, 2, 3, 4]), [5, 6, 7, 8])
    other_parent = h(None, [9, 9, 9, 9])
    assert h(first, [5, 6, 7, 8]) != h(other_parent, [5, 6, 7, 8]), \
        "equal tokens after a different prefix must hash differently: chain in the parent's hash"
    assert h(None, [5, 6, 7, 8]) != h(first, [5, 6, 7, 8]), "a first block differs from a later one"


def pool_trace(pool: Any, cache: Any) -> list[tuple[str, Any]]:
    """The same BlockPool calls on either pool; `cache(blocks, n)` caches the first n of `blocks`."""
    seen: list[tuple[str, Any]] = [("initially free", pool.get_num_free_blocks())]
    a = pool.get_new_blocks(3)
    b = pool.get_new_blocks(2)
    seen.append(("first allocations", [blk.block_id for blk in a + b]))
    cache(a, 2)
    pool.free_blocks(reversed(a))                 # a[1], a[0] cached: to the tail; a[2] to the head
    seen.append(("free after a", pool.get_num_free_blocks()))
    pool.touch([a[0]])                            # a prefix hit revives a free cached block
    pool.touch([b[0]])                            # ... or shares a block in use
    seen.append(("free after touch", pool.get_num_free_blocks()))
    pool.free_blocks(b)
    seen.append(("ref_cnt of b", [blk.ref_cnt for blk in b]))
    pool.free_blocks([a[0], b[0]])
    seen.append(("usage", round(pool.get_usage(), 6)))
    rest = pool.get_new_blocks(pool.get_num_free_blocks())  # drains the free queue in eviction order
    seen.append(("eviction order", [blk.block_id for blk in rest]))
    seen.append(("hash forgotten on eviction", [blk.block_hash is None for blk in a]))
    with pytest.raises(ValueError):
        pool.get_new_blocks(1)
    return seen


def test_block_pool_matches_vllm(impl: Any) -> None:
    block_size = 4
    prompt = list(range(12))

    vllm_pool = vi.make_kv_cache_manager(10, block_size).block_pool
    vllm_request = vi.make_vllm_request("r", prompt, block_size)
    expected = pool_trace(vllm_pool, lambda blocks, n: vllm_pool.cache_full_blocks(
        vllm_request, blocks, 0, n, block_size, kv_cache_group_id=0))

    pool = impl.BlockPool(10)
    request = Request("r", prompt)
    for start in range(0, len(prompt), block_size):
        parent = request.block_hashes[-1] if request.block_hashes else None
        request.block_hashes.append(impl.hash_block_tokens(parent, prompt[start:start + block_size]))
    got = pool_trace(pool, lambda blocks, n: pool.cache_full_blocks(request, blocks, 0, n, block_size))
    assert got == expected, diff_table(dict(expected), dict(got))
    assert pool.get_cached_block(request.block_hashes[0]) is None, "an evicted block must leave the prefix cache"


# --- The grader itself: a wrong manager must fail, with a diff that says where ----------------

class FreesInForwardOrder(reference.KVCacheManager):
    """Frees a request's blocks first to last: its head blocks get evicted before its tail."""

    def free(self, request: Request) -> None:
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.num_cached_block.pop(request.request_id, None)
        self.block_pool.free_blocks(blocks)


class HitsTheWholePrompt(reference.KVCacheManager):
    """Forgets that the last prompt token must be recomputed to get logits."""

    def get_computed_blocks(self, request: Request) -> tuple[list[Any], int]:
        reference.update_block_hashes(request, self.block_size)
        computed_blocks = []
        for block_hash in request.block_hashes:  # should stop before the block of the last token
            cached_block = self.block_pool.get_cached_block(block_hash)
            if cached_block is None:
                break
            computed_blocks.append(cached_block)
        return computed_blocks, len(computed_blocks) * self.block_size


class FreedBlocksToTail(reference.BlockPool):
    """Older vLLM: every freed block to the free queue's tail, cached or not (no LIFO reuse)."""

    def free_blocks(self, ordered_blocks: Any) -> None:
        for block in ordered_blocks:
            block.ref_cnt -= 1
            if block.ref_cnt == 0 and block is not self.null_block:
                self.free_block_queue[block.block_id] = block


class UncachedBlocksToTail(reference.KVCacheManager):
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        super().__init__(num_blocks, block_size, enable_caching)
        self.block_pool = FreedBlocksToTail(num_blocks, enable_caching)


def broken(manager_class: type) -> Any:
    return SimpleNamespace(KVCacheManager=manager_class)


@pytest.mark.parametrize(("manager_class", "trace_name", "expected_in_message"), [
    (FreesInForwardOrder, "eviction_and_preemption", ["operation 3: Add(request_id='c'", "blocks of c"]),
    (HitsTheWholePrompt, "shared_prefixes", ["operation 3: Add(request_id='d'", "hit tokens", "4", "8"]),
    (UncachedBlocksToTail, "no_prefix_caching", ["operation 6: Add(request_id='c'", "blocks of c"]),
])
def test_grader_catches_a_wrong_manager(manager_class: type, trace_name: str,
                                        expected_in_message: list[str]) -> None:
    trace = next(t for t in TRACES if t.name == trace_name)
    with pytest.raises(AssertionError) as failure:
        replay_and_compare(broken(manager_class), trace)
    message = str(failure.value)
    for text in ["vLLM (expected)", "yours", "<-- differs", *expected_in_message]:
        assert text in message, message


def test_learner_file_mirrors_the_reference() -> None:
    """The exercise file has every class, method and function of the reference, same signatures."""
    import inspect

    learner = load_implementation("lab2_kv_cache", "learner")
    for name in ["hash_block_tokens", "update_block_hashes", "KVCacheBlock", "BlockPool", "KVCacheManager"]:
        ref_obj, learner_obj = getattr(reference, name), getattr(learner, name)
        assert inspect.signature(learner_obj) == inspect.signature(ref_obj), name
        for method, ref_fn in inspect.getmembers(ref_obj, inspect.isfunction):
            if not method.startswith("__") or method == "__init__":
                assert inspect.signature(getattr(learner_obj, method)) == inspect.signature(ref_fn), f"{name}.{method}"
