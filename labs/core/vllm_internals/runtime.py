"""Process-wide vLLM state around an engine's life: its env cache, its shutdown, its output kinds.

Why a module: `labs.core.engine` starts and frees several engines in one process (a notebook
kernel, a test session). Doing that cleanly needs three internal reaches, written here once:
vLLM's cached view of `os.environ` must be dropped before the next engine reads it, the engine
core must be shut down, and vLLM's process-wide distributed state must be torn down. The labs
also pick a request's `RequestOutputKind`, which vLLM does not export from its top level. One
workaround every vLLM process needs (`guard_kernel_override_scan`, a general plugin): engines must
start in processes that imported numba. And a log filter must outlive vLLM's re-configuration of
its logging at every engine start (`keep_vllm_handler_filter`).
"""

from __future__ import annotations

import logging
from typing import Any

from labs.core.vllm_internals.version import check_vllm_version


def disable_envs_cache() -> None:
    """Let vLLM re-read os.environ: after an engine starts, vLLM caches its env vars.

    Why: `make_llm` exports a different environment per engine (threads, multiprocessing);
    without this the second engine of a process would still see the first one's values.
    """
    import vllm.envs

    vllm.envs.disable_envs_cache()


def shutdown_engine_core(llm_or_engine: Any, keep_process_state: bool = False) -> None:
    """Stop the engine core of an `LLM` (or `LLMEngine`): its busy loop, worker processes or threads.

    Why: dropping the last reference is not enough while the core's own threads and processes
    hold it; `LLMEngine.engine_core` is the client (in-process or not) that owns them.

    Args:
        llm_or_engine: a `vllm.LLM` or its `llm_engine`; one with no engine yet is left alone.
        keep_process_state: for an in-process engine (`InprocClient`), stop it without vLLM's
            teardown of the process-wide distributed state: `EngineCore.shutdown`
            (vllm/v1/engine/core.py) ends with `cleanup_dist_env_and_memory()`, which breaks every
            other in-process engine of the process ("pipeline model parallel group is not
            initialized"). The client's finalizer is detached, so garbage collection does not
            run that teardown later either.
    """
    import gc

    engine = getattr(llm_or_engine, "llm_engine", llm_or_engine)
    client = getattr(engine, "engine_core", None)
    if client is None:
        return
    core = getattr(client, "engine_core", None)
    if keep_process_state and type(client).__name__ == "InprocClient" and core is not None:
        finalizer = getattr(client, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()
        # EngineCore.shutdown, less its last line (cleanup_dist_env_and_memory)
        core.structured_output_manager.clear_backend()
        if core.model_executor:
            core.model_executor.shutdown()
        if core.scheduler:
            core.scheduler.shutdown()
        gc.unfreeze()
        return
    client.shutdown()


def cleanup_dist_env_and_memory() -> None:
    """Tear down vLLM's process-wide distributed state (process groups, TP/PP groups) and caches.

    Why: vLLM keeps its parallel groups in module globals (vllm/distributed/parallel_state.py),
    so a second engine in the same process fails until they are destroyed. Any engine still
    running in this process stops working, so free engines one at a time.
    """
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory as cleanup

    cleanup()


def request_output_kind_enum() -> Any:
    """vLLM's `RequestOutputKind` enum (CUMULATIVE, DELTA, FINAL_ONLY), imported when first needed.

    Why: a `SamplingParams.output_kind` decides whether the engine reports a request on every
    step or only at the end; the enum lives in `vllm.sampling_params`, not in `vllm`'s public
    namespace. Reach it as `labs.core.vllm_internals.RequestOutputKind`.

    Returns:
        The enum class.
    """
    check_vllm_version()
    from vllm.sampling_params import RequestOutputKind

    return RequestOutputKind


def guard_kernel_override_scan() -> None:
    """Work around a vLLM 0.32.0 bug that stops engines from starting after numba was imported.

    Registered as a vLLM general plugin (pyproject.toml), so it runs in every vLLM process before
    the worker calls `current_platform.register_triton_kernel_overrides()`. That call scans every
    module in `sys.modules` (`vllm/triton_utils/dispatcher.py`) and crashes with
    `AttributeError: '_lib_fn_wrapper' object has no attribute 'get'` on `llvmlite.binding.ffi`,
    which numba imports (vLLM's own n-gram drafter loads numba; so do Lab 7's graders). The guard
    hides that one module from the scan; it holds no kernel to override. Idempotent.
    """
    import sys

    from vllm.platforms import current_platform

    platform_cls = type(current_platform)
    original = platform_cls.register_triton_kernel_overrides  # bound to the class (a classmethod)
    if getattr(original, "__func__", original).__dict__.get("_workbook_guarded"):
        return

    def register_triton_kernel_overrides(cls: type) -> None:
        hidden = sys.modules.pop("llvmlite.binding.ffi", None)
        try:
            original()
        finally:
            if hidden is not None:
                sys.modules["llvmlite.binding.ffi"] = hidden

    register_triton_kernel_overrides._workbook_guarded = True  # type: ignore[attr-defined]
    platform_cls.register_triton_kernel_overrides = classmethod(register_triton_kernel_overrides)


# Filter types kept on vLLM's handlers in this process; process-wide, as the handlers are.
_KEPT_FILTER_TYPES: list[type[logging.Filter]] = []


def keep_vllm_handler_filter(filter_type: type[logging.Filter]) -> None:
    """Put a `filter_type()` on vLLM's log handlers now and again each time vLLM configures its logging.

    Why: vLLM 0.32 applies its logging `dictConfig` again whenever an engine's `LoggingConfig`
    differs from the last one applied (`LLM.__init__` -> `configure_logging_if_needed`), and
    `dictConfig` replaces the `vllm` logger's handlers: a filter put on the old handlers is gone
    before the engine logs its start-up lines. vLLM's `configure_logging` calls
    `vllm.logger._configure_vllm_root_logger`, so that call is wrapped to put the filter back.
    Idempotent: the wrapper goes on once, and a handler gets one filter of each type.

    Args:
        filter_type: a `logging.Filter` subclass that takes no arguments.
    """
    import vllm.logger

    if filter_type not in _KEPT_FILTER_TYPES:
        _KEPT_FILTER_TYPES.append(filter_type)
    configure = vllm.logger._configure_vllm_root_logger
    if not getattr(configure, "_workbook_refilters", False):
        def configure_then_refilter(*args: Any, **kwargs: Any) -> None:
            configure(*args, **kwargs)
            _add_kept_filters()

        configure_then_refilter._workbook_refilters = True  # type: ignore[attr-defined]
        vllm.logger._configure_vllm_root_logger = configure_then_refilter
    _add_kept_filters()


def _add_kept_filters() -> None:
    for handler in logging.getLogger("vllm").handlers:
        for filter_type in _KEPT_FILTER_TYPES:
            if not any(isinstance(f, filter_type) for f in handler.filters):
                handler.addFilter(filter_type())
