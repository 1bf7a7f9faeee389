"""Live state of an in-process engine: its scheduler, KV cache manager, block pool and model runner.

Why a module of its own: labs show what the real engine decided (queues, block tables, free
blocks, prefix-cache hashes, the scheduler's `SchedulerOutput`s) by reading attributes that
are not vLLM's public API. The chain of attributes is written once, here (see the package
docstring for the classes behind each step), and every function takes an `LLM` or an
`LLMEngine` whose engine core runs in this process (`labs.core.engine.make_llm` sees to that).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from labs.core.errors import WorkbookError
from labs.core.vllm_internals.version import check_vllm_version
from labs.core.vllm_internals.standalone import free_queue_block_ids


class EngineNotInProcessError(WorkbookError):
    """Live engine state was asked for, but the engine core runs in another process."""


def llm_engine(llm_or_engine: Any) -> Any:
    """The `LLMEngine` of an `LLM` (or the engine itself): labs may pass either."""
    return getattr(llm_or_engine, "llm_engine", llm_or_engine)


def engine_core(llm_or_engine: Any) -> Any:
    """The `EngineCore` of an `LLM` or `LLMEngine`, which must run in this process.

    Why the check: with multiprocessing on, the client holds only a socket to another process,
    and every attribute below would fail far from the cause; this names the cause instead.

    Args:
        llm_or_engine: a `vllm.LLM` or its `llm_engine`.

    Returns:
        The `vllm.v1.engine.core.EngineCore`; raises `EngineNotInProcessError` if it runs elsewhere.
    """
    check_vllm_version()
    client = llm_engine(llm_or_engine).engine_core
    core = getattr(client, "engine_core", None)
    if core is None or not hasattr(core, "scheduler"):
        raise EngineNotInProcessError(
            f"The engine core runs in another process ({type(client).__name__}), so its live state "
            "cannot be read here. Set VLLM_ENABLE_V1_MULTIPROCESSING=0 before creating the engine "
            "(labs.core.engine.make_llm does this by default)."
        )
    return core


def scheduler(llm_or_engine: Any) -> Any:
    """The live `Scheduler`: its `running`/`waiting` queues and `requests` are the engine's truth."""
    return engine_core(llm_or_engine).scheduler


def kv_cache_manager(llm_or_engine: Any) -> Any:
    """The live `KVCacheManager`: which blocks each request holds, and prefix-cache lookups."""
    return scheduler(llm_or_engine).kv_cache_manager


def block_pool(llm_or_engine: Any) -> Any:
    """The live `BlockPool`: every KV block, its ref count and hash, and the free queue."""
    return kv_cache_manager(llm_or_engine).block_pool


def model_runner(llm_or_engine: Any) -> Any:
    """The driver worker's model runner (rank 0): the model, its KV cache tensors, the sampler."""
    return engine_core(llm_or_engine).model_executor.driver_worker.worker.model_runner


def model(llm_or_engine: Any) -> Any:
    """The `torch.nn.Module` vLLM runs (e.g. vllm.model_executor.models.qwen2.Qwen2ForCausalLM)."""
    return model_runner(llm_or_engine).model


def kv_cache_tensors(llm_or_engine: Any) -> list[Any]:
    """One KV cache tensor per attention layer, as the model runner allocated them."""
    return list(model_runner(llm_or_engine).kv_caches)


def internal_request_id(llm_or_engine: Any, request_id: str) -> str:
    """The scheduler's id for a request added as `request_id`.

    Why: since 0.11 vLLM appends 8 random characters to every request id (`abc` -> `abc-1f2e3d4c`)
    so that ids stay unique; labs let learners keep using the ids they chose.
    """
    requests = scheduler(llm_or_engine).requests
    if request_id in requests:
        return request_id
    matches = [rid for rid in requests if rid.rsplit("-", 1)[0] == request_id]
    if len(matches) != 1:
        raise KeyError(f"request {request_id!r} is not in the scheduler (known: {sorted(requests)})")
    return matches[0]


def external_request_id(request_id: str) -> str:
    """'req-3-1a2b3c4d' -> 'req-3': the id the learner chose, from the scheduler's internal id."""
    head, _, tail = request_id.rpartition("-")
    return head if head and len(tail) == 8 else request_id


def request_block_ids(llm_or_engine: Any, request_id: str) -> list[int]:
    """Block table of a live request: the KV block ids holding its tokens, in order."""
    rid = internal_request_id(llm_or_engine, request_id)
    (block_ids, *_) = kv_cache_manager(llm_or_engine).get_block_ids(rid)
    return list(block_ids)


@dataclass(frozen=True)
class KVCacheSnapshot:
    """The KV cache's bookkeeping at one moment (all counts in blocks)."""

    block_size: int
    num_blocks: int  # usable blocks; vLLM reserves block 0 as the "null block"
    num_free_blocks: int
    usage: float  # fraction of blocks in use, as vLLM reports it in /metrics (kv_cache_usage_perc)
    prefix_caching: bool


def kv_cache_snapshot(llm_or_engine: Any) -> KVCacheSnapshot:
    """The KV cache's bookkeeping now, as plain values a lab can print or compare between steps."""
    sched = scheduler(llm_or_engine)
    pool = sched.kv_cache_manager.block_pool
    return KVCacheSnapshot(
        block_size=sched.block_size,
        num_blocks=pool.num_gpu_blocks - 1,
        num_free_blocks=pool.get_num_free_blocks(),
        usage=pool.get_usage(),
        prefix_caching=bool(sched.cache_config.enable_prefix_caching),
    )


@dataclass(frozen=True)
class RequestSnapshot:
    """One request in the scheduler's queues, with the KV blocks it holds (ids are vLLM's internal ones)."""

    request_id: str
    status: str
    num_prompt_tokens: int
    num_computed_tokens: int
    num_output_tokens: int
    block_ids: list[int]


def queue_snapshot(llm_or_engine: Any) -> dict[str, list[RequestSnapshot]]:
    """The scheduler's running and waiting queues, each request with its block table."""
    sched = scheduler(llm_or_engine)

    def snap(req: Any) -> RequestSnapshot:
        (block_ids, *_) = sched.kv_cache_manager.get_block_ids(req.request_id)
        return RequestSnapshot(req.request_id, req.status.name, req.num_prompt_tokens,
                               req.num_computed_tokens, req.num_output_tokens, list(block_ids))

    return {"running": [snap(r) for r in sched.running], "waiting": [snap(r) for r in sched.waiting]}


@dataclass(frozen=True)
class BlockState:
    """One KV block as the block pool sees it."""

    block_id: int
    ref_cnt: int  # how many running requests use it; 0 = free (maybe still holding a cached prefix)
    is_cached: bool  # holds a full block registered in the prefix cache (has a block hash)


def block_states(llm_or_engine: Any, num_blocks: int | None = None) -> list[BlockState]:
    """The first `num_blocks` blocks of the pool (all by default); block 0 is vLLM's null block."""
    pool = block_pool(llm_or_engine)
    blocks = pool.blocks if num_blocks is None else pool.blocks[:num_blocks]
    return [BlockState(b.block_id, b.ref_cnt, b.block_hash is not None) for b in blocks]


def free_block_ids(llm_or_engine: Any, limit: int = 32) -> list[int]:
    """The head of the live engine's free queue: the next blocks to be handed out (and evicted, if cached)."""
    return free_queue_block_ids(kv_cache_manager(llm_or_engine))[:limit]


def request_block_hashes(llm_or_engine: Any, request_id: str) -> list[bytes]:
    """The chained hashes of a live request's full blocks (hash i covers tokens 0..(i+1)*block_size).

    Why chained: a block's hash includes its parent's, so equal hashes mean equal *prefixes*, not
    just equal blocks; that is what makes a cache hit safe to reuse.
    """
    sched = scheduler(llm_or_engine)
    return list(sched.requests[internal_request_id(llm_or_engine, request_id)].block_hashes)


def record_scheduler_outputs(llm_or_engine: Any) -> deque[Any]:
    """Make the live scheduler keep its latest `SchedulerOutput`s; returns that (shared) deque.

    Why: `LLMEngine.step()` does not return the scheduler's decision, and deriving it from
    `num_computed_tokens` gets prefix-cache hits and preemptions wrong. Wrapping `schedule` on
    this one scheduler instance records exactly what vLLM decided, without changing it.
    Each output has `num_scheduled_tokens` (internal request id -> tokens), `scheduled_new_reqs`
    (with their prefix-cache `num_computed_tokens`) and `preempted_req_ids`. Clear it before a
    step you want to observe; only the last few are kept, so other steps never pile up in memory.
    """
    sched = scheduler(llm_or_engine)
    recorded = getattr(sched, "_workbook_scheduler_outputs", None)
    if recorded is None:
        recorded = sched._workbook_scheduler_outputs = deque(maxlen=8)
        original = sched.schedule

        def schedule(*args: Any, **kwargs: Any) -> Any:
            output = original(*args, **kwargs)
            recorded.append(output)
            return output

        sched.schedule = schedule
    return recorded


@dataclass(frozen=True)
class SchedulerDecision:
    """One recorded `SchedulerOutput` as plain values (internal request ids, as vLLM keeps them)."""

    num_scheduled_tokens: dict[str, int]  # request id -> tokens granted this step, in schedule order
    num_cached_tokens: dict[str, int]  # admitted this step with a prefix-cache hit: tokens not computed
    preempted_req_ids: list[str]  # sorted: vLLM keeps a set, so the order is not recorded


def scheduler_decision(output: Any) -> SchedulerDecision:
    """Read one `SchedulerOutput` from `record_scheduler_outputs` into a `SchedulerDecision`.

    Why: the fields of `SchedulerOutput` (vllm/v1/core/sched/output.py) are internal and change
    between releases; callers read these three plain fields instead.

    Args:
        output: one element of the deque `record_scheduler_outputs` returns.

    Returns:
        What the scheduler granted, what it found cached for newly admitted requests, and whom it preempted.
    """
    cached = {new_req.req_id: new_req.num_computed_tokens
              for new_req in output.scheduled_new_reqs if new_req.num_computed_tokens}
    return SchedulerDecision(dict(output.num_scheduled_tokens), cached,
                             sorted(output.preempted_req_ids or ()))


def num_preemptions(llm_or_engine: Any, request_id: str) -> int:
    """How often the scheduler preempted this request (its KV blocks were taken back)."""
    sched = scheduler(llm_or_engine)
    return sched.requests[internal_request_id(llm_or_engine, request_id)].num_preemptions


@dataclass(frozen=True)
class SchedulerLimits:
    """The knobs that shape every batch the scheduler builds (vllm/config/scheduler.py)."""

    max_num_seqs: int  # requests RUNNING at once: the batch size of continuous batching
    max_num_batched_tokens: int  # token budget of one step, prefill chunks and decodes together
    long_prefill_token_threshold: int  # cap on one request's prefill chunk per step; 0 = no cap
    enable_chunked_prefill: bool  # a prompt longer than the budget left is split across steps
    async_scheduling: bool  # step n+1 is scheduled while step n runs (GPU default)
    policy: str  # "fcfs" or "priority": who is admitted first, and who is preempted first
    scheduler_reserve_full_isl: bool  # admit a waiting request only if all its tokens fit in free blocks


def scheduler_limits(llm_or_engine: Any) -> SchedulerLimits:
    """The live scheduler's batch limits, as the engine resolved them from its arguments.

    Why read them back: `LLM(...)` arguments are only requests; vLLM fills in per-platform
    defaults (e.g. `max_num_batched_tokens`) and may switch features off, so labs print what the
    scheduler actually uses.
    """
    config = scheduler(llm_or_engine).scheduler_config
    return SchedulerLimits(
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        long_prefill_token_threshold=config.long_prefill_token_threshold,
        enable_chunked_prefill=bool(config.enable_chunked_prefill),
        async_scheduling=bool(config.async_scheduling),
        policy=str(config.policy),
        scheduler_reserve_full_isl=bool(config.scheduler_reserve_full_isl),
    )

