"""The one door to vLLM's internals (scheduler, KV cache manager, block pool, model runner).

Why one package: these attribute and module paths are not a public API and move between vLLM
releases. Every lab reaches them through here (`tests/test_vllm_internals.py` checks that no
other file under labs/ or my_debug_scripts/ imports a `vllm.<submodule>`), so a vLLM upgrade
is a change to this package only, and on any other version the labs stop with a message
naming the pinned one instead of an AttributeError deep inside a notebook.

On a vLLM upgrade: set PINNED_VLLM_VERSION in version.py (and VLLM_VERSION in the Makefile, the
pins in pyproject.toml), then port the modules, one concern each:
    version       the pinned version and `check_vllm_version`, which every entry point runs first
    live_engine   live state of an in-process engine: scheduler, KV cache manager, block pool,
                  model runner, queues and block tables, recorded scheduler decisions
    standalone    vLLM's KVCacheManager, Scheduler and top-k/top-p masks with no engine (graders)
    sizes         weight and KV cache bytes as vLLM sizes them; fp8 KV scales
    profiling     vLLM's torch profiler and the methods each stage of a request runs through
    workers       tensor-parallel workers: each rank's weight shards, a worker process's rank;
                  whether the platform runs vLLM's Ray executor, the node address vLLM announces
    server_args   the OpenAI API server's module (what `python -m` runs) and its own argument parser
    bench         vLLM's serving benchmark (`vllm bench serve`) as a fresh process's argv
    runtime       env cache, engine shutdown, distributed teardown, RequestOutputKind; the plugin that
                  lets engines start after numba was imported (a 0.32.0 bug); a log filter that stays
                  on vLLM's handlers when an engine start re-configures them
One module per later lab, imported from the module itself (`from labs.core.vllm_internals.spec_decode
import record_spec_steps`), not re-exported here, so this package's names stay the engine's:
    spec_decode        Lab 7: the scheduler's draft tokens per step, the drafter, vLLM's n-gram
                       proposer, greedy rejection and acceptance counters
    structured_output  Lab 8: StructuredOutputsParams, the grammar bitmask per step, xgrammar matchers,
                       vLLM's bitmask application
    lora               Lab 9: adapter slots, LoRA batches per step, PEFT scaling, vLLM's punica LoRA ops
    failures           Lab 10: a worker paused through the workbook's plugin, preemptions recorded,
                       bursts against vLLM's standalone scheduler

Paths below are those of vLLM 0.32.0 (the v1 engine):
    LLM.llm_engine                       vllm.v1.engine.llm_engine.LLMEngine
      .engine_core                       InprocClient (only with VLLM_ENABLE_V1_MULTIPROCESSING=0)
        .engine_core                     vllm.v1.engine.core.EngineCore
          .scheduler                     vllm.v1.core.sched.scheduler.Scheduler
            .kv_cache_manager            vllm.v1.core.kv_cache_manager.KVCacheManager
              .block_pool                vllm.v1.core.block_pool.BlockPool
          .model_executor.driver_worker.worker.model_runner   (the GPU/CPU model runner)

Importing this package imports no vLLM module: vLLM is imported by the functions that need it,
so `make doctor`, the debugger plugin and the tests that never start an engine stay fast.
"""

from __future__ import annotations

from typing import Any

from labs.core.vllm_internals.bench import BENCH_SERVE_CODE, bench_serve_argv
from labs.core.vllm_internals.live_engine import (
    BlockState,
    EngineNotInProcessError,
    KVCacheSnapshot,
    RequestSnapshot,
    SchedulerDecision,
    SchedulerLimits,
    block_pool,
    block_states,
    engine_core,
    external_request_id,
    free_block_ids,
    internal_request_id,
    kv_cache_manager,
    kv_cache_snapshot,
    kv_cache_tensors,
    llm_engine,
    model,
    model_runner,
    num_preemptions,
    queue_snapshot,
    record_scheduler_outputs,
    request_block_hashes,
    request_block_ids,
    scheduler,
    scheduler_decision,
    scheduler_limits,
)
from labs.core.vllm_internals.profiling import (
    engine_stage_methods,
    profiler_trace_dir,
    timed_engine_stages,
    worker_torch_profiler,
)
from labs.core.vllm_internals.runtime import (
    cleanup_dist_env_and_memory,
    disable_envs_cache,
    request_output_kind_enum,
    shutdown_engine_core,
)
from labs.core.vllm_internals.server_args import SERVER_MODULE, parse_server_args
from labs.core.vllm_internals.sizes import (
    attention_kv_scales,
    kv_cache_bytes_per_token,
    kv_cache_spec_bytes_per_token,
    model_weight_bytes,
)
from labs.core.vllm_internals.standalone import (
    ScheduledStep,
    StandaloneScheduler,
    apply_top_k_top_p,
    free_queue_block_ids,
    make_kv_cache_manager,
    make_vllm_request,
)
from labs.core.vllm_internals.version import PINNED_VLLM_VERSION, UPGRADE_HINT, VllmVersionError, check_vllm_version
from labs.core.vllm_internals.workers import get_host_ip, ray_executor_support, tp_rank_weights, worker_process_rank


def __getattr__(name: str) -> Any:
    """`RequestOutputKind`, imported from vLLM on first use (importing this package imports no vLLM).

    Why lazily: `from labs.core.vllm_internals import RequestOutputKind` must work like a plain
    re-export, but importing vLLM takes seconds and most users of this package never need it.
    """
    if name == "RequestOutputKind":
        return request_output_kind_enum()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PINNED_VLLM_VERSION", "UPGRADE_HINT", "VllmVersionError", "check_vllm_version", "RequestOutputKind",
    # live_engine
    "BlockState", "EngineNotInProcessError", "KVCacheSnapshot", "RequestSnapshot", "SchedulerDecision",
    "SchedulerLimits", "block_pool", "block_states", "engine_core", "external_request_id", "free_block_ids",
    "internal_request_id", "kv_cache_manager", "kv_cache_snapshot", "kv_cache_tensors", "llm_engine", "model",
    "model_runner", "num_preemptions", "queue_snapshot", "record_scheduler_outputs", "request_block_hashes",
    "request_block_ids", "scheduler", "scheduler_decision", "scheduler_limits",
    # profiling
    "engine_stage_methods", "profiler_trace_dir", "timed_engine_stages", "worker_torch_profiler",
    # runtime
    "cleanup_dist_env_and_memory", "disable_envs_cache", "request_output_kind_enum", "shutdown_engine_core",
    # server_args, bench, sizes
    "SERVER_MODULE", "parse_server_args", "BENCH_SERVE_CODE", "bench_serve_argv", "attention_kv_scales", "kv_cache_bytes_per_token", "kv_cache_spec_bytes_per_token",
    "model_weight_bytes",
    # standalone
    "ScheduledStep", "StandaloneScheduler", "apply_top_k_top_p", "free_queue_block_ids", "make_kv_cache_manager",
    "make_vllm_request",
    # workers
    "tp_rank_weights", "worker_process_rank", "ray_executor_support", "get_host_ip",
]
