"""Build a real `vllm.LLM` with settings for this machine, say why, and free it again.

Why `make_llm` instead of `LLM(...)` in every notebook: the same call must pick the model
(`labs.core.models.resolve_model`), pick hardware settings (`labs.core.hardware`), keep the engine core in
this process so labs can read its live state, and print all of that, on a laptop CPU and on a
GPU alike.
"""

from __future__ import annotations

import gc
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labs.core.engine_settings import EngineSettings, engine_settings, in_process_num_threads
from labs.core.hardware import Hardware, detect_hardware
from labs.core.models.resolve import ResolvedModel, resolve_model

# Engines made by make_llm and not yet freed: vLLM's distributed state is process-wide, and only
# the last engine's free may tear it down (a notebook, a test session hold several at once).
_live_engines: weakref.WeakSet[Any] = weakref.WeakSet()

DEFAULT_MAX_MODEL_LEN = 2048  # labs never need more; a small limit keeps the KV cache per request small


@dataclass(frozen=True)
class RunInfo:
    """What a lab runs on, and why: printed at the top of every lab."""

    model: ResolvedModel
    hardware: Hardware
    settings: EngineSettings

    def describe(self) -> str:
        lines = [f"Model:    {self.model.path}", f"  why:    {self.model.reason}",
                 f"Hardware: {self.hardware.describe()}"]
        lines += [f"  why:    {reason}" for reason in self.settings.reasons]
        return "\n".join(lines)


def _weights_bytes(model_path: str) -> int:
    path = Path(model_path)
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) + sum(f.stat().st_size for f in path.glob("*.bin"))


# What make_llm exported for the last engine (name -> value). vLLM reads these variables from the
# environment, so they must be exported; remembering them lets the next make_llm start from the
# user's own environment instead of inheriting, say, a TP=2 thread binding for a TP=1 engine.
_exported_env: dict[str, str] = {}


def export_engine_env(env: dict[str, str]) -> None:
    """Export the engine settings' variables; a variable the user exported already wins."""
    for key, value in env.items():
        if key not in os.environ:
            os.environ[key] = value
            _exported_env[key] = value


def unexport_engine_env() -> None:
    """Remove what `export_engine_env` exported (unless it has been changed since)."""
    for key, value in list(_exported_env.items()):
        if os.environ.get(key) == value:
            del os.environ[key]
    _exported_env.clear()


def plan_run(model: str | None = None, *, block_size: int | None = None, kv_cache_dtype: str = "auto",
             tensor_parallel_size: int = 1) -> RunInfo:
    """Resolve the model and the engine settings without starting anything (cheap; raises early)."""
    resolved = resolve_model(model)
    hw = detect_hardware()
    settings = engine_settings(hw, weights_bytes=_weights_bytes(resolved.path), block_size=block_size,
                               kv_cache_dtype=kv_cache_dtype, tensor_parallel_size=tensor_parallel_size)
    return RunInfo(resolved, hw, settings)


def make_llm(model: str | None = None, *, block_size: int | None = None, kv_cache_dtype: str = "auto",
             tensor_parallel_size: int = 1, max_model_len: int = DEFAULT_MAX_MODEL_LEN,
             inspectable: bool | None = None, verbose: bool = True, **engine_kwargs: Any) -> Any:
    """Create a real `vllm.LLM` for this machine.

    Args:
        model: a path, hub id or name (see `labs.core.models.resolve_model`); default: `VLLM_MODEL`,
            else a small local instruct model, else `tiny-phrasebook`.
        block_size: KV block size in tokens (multiple of 32 on CPU); default: the backend's.
        kv_cache_dtype: "auto", or "fp8" where the hardware supports it (checked first).
        tensor_parallel_size: number of workers.
        max_model_len: longest prompt + output per request.
        inspectable: True keeps the engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)
            so `labs.core.vllm_internals` can read the scheduler and KV cache; False runs it in its own
            process (faster). None: an exported VLLM_ENABLE_V1_MULTIPROCESSING wins, else True.
        verbose: print the model, hardware and reasons first.
        **engine_kwargs: anything else `vllm.LLM` accepts; wins over the chosen settings.

    Returns:
        The `vllm.LLM`; its `RunInfo` is attached as `llm.workbook_run_info`.
    """
    from labs.core.vllm_internals import check_vllm_version, disable_envs_cache

    check_vllm_version()
    unexport_engine_env()  # the previous engine's TP binding must not leak into this one
    run = plan_run(model, block_size=block_size, kv_cache_dtype=kv_cache_dtype,
                   tensor_parallel_size=tensor_parallel_size)
    export_engine_env(run.settings.env)
    if inspectable is not None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if inspectable else "1"
    else:  # nothing asked: what the user (or labs.core.debug.safe) set wins, else keep the core here
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    threads_reason = _set_in_process_threads(run.hardware, tensor_parallel_size)
    if verbose:
        print(run.describe() + (f"\n  why:    {threads_reason}" if threads_reason else ""), flush=True)
    disable_envs_cache()  # a previous engine froze vLLM's view of os.environ

    from vllm import LLM

    from labs.core.quiet_output import quiet_vllm_logs

    quiet_vllm_logs()  # vLLM's handlers exist once it is imported
    kwargs = {**run.settings.engine_kwargs, "max_model_len": max_model_len, **engine_kwargs}
    if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0":
        # The engine core is built here, and it freezes the garbage collector's heap at its start
        # with three full collections over every object the imports made (~0.4 s each on 2 cores).
        # Frozen first, those collections are quick: an engine starts ~1 s sooner. Only where vLLM
        # freezes moments later anyway (freezing a process vLLM does not, such as the caller of a
        # multiprocess engine, kept its exit from finishing); its shutdown unfreezes the heap.
        gc.freeze()
    llm = LLM(model=run.model.path, **kwargs)
    _live_engines.add(llm)
    llm.workbook_run_info = run
    return llm


def _set_in_process_threads(hw: Hardware, tensor_parallel_size: int) -> str | None:
    """Size torch's OpenMP pool for a CPU engine that computes in this process (see
    `in_process_num_threads`); returns the reason, or None when the engine's workers are processes
    of their own (vLLM binds those) or the device is a GPU."""
    if hw.device != "cpu" or tensor_parallel_size > 1 or os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
        return None
    import torch

    num_threads, reason = in_process_num_threads(hw)
    # torch._C's function, not torch.set_num_threads: vLLM's CPU worker replaces the latter with a
    # no-op once an engine has started in this process.
    torch._C.set_num_threads(num_threads)
    return reason


def free_llm(llm: Any) -> None:
    """Shut the engine down and release its memory, so a second engine can start in this process.

    Why this is needed: a notebook keeps `llm` (and often `Out[...]`) alive; vLLM's engine owns
    worker processes or threads, the KV cache and the weights, and a new `LLM` in the same kernel
    fails or runs out of memory until they are released.

    It also tears down vLLM's process-wide distributed state, but only with the last engine of the
    process that make_llm made: torn down under a running engine, its next step fails with
    "pipeline model parallel group is not initialized".
    """
    from labs.core.vllm_internals import cleanup_dist_env_and_memory, shutdown_engine_core

    _live_engines.discard(llm)
    others_alive = len(_live_engines) > 0
    shutdown_engine_core(llm, keep_process_state=others_alive)
    try:
        del llm.llm_engine
    except AttributeError:
        pass
    if others_alive:
        gc.collect()
    else:
        cleanup_dist_env_and_memory()  # ends with gc.collect(): one full collection (~0.4 s) is enough
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
