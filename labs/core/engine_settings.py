"""Turn the detected hardware into vLLM engine settings, each with the reason it was chosen.

Why a module of its own: vLLM's CPU and CUDA backends want different knobs (KV-cache space in
GiB and a block size that is a multiple of 32 on CPU; a share of GPU memory on CUDA). Keeping
that decision in one place means every lab, script and test gets the same, explained settings,
and nothing CPU-only can leak into the GPU path: CPU settings are produced only when no CUDA
device is present.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from labs.core.debug.vllm_workers import (DEBUG_ENGINE_ENV, WORKER_DEBUG_ENV, check_ready_to_debug_workers,
                                          debugging_workers)
from labs.core.hardware import Hardware, UnsupportedHardwareError, parse_cpu_list

# --- why these defaults ----------------------------------------------------------------------
CPU_BLOCK_SIZE = 32  # vLLM's CPU attention needs a multiple of 32; 32 keeps blocks visible in labs
CPU_KVCACHE_SPACE_GIB_SMALL = 1  # 1 GiB holds ~500k tokens of the tiny models: plenty, cheap
GPU_MEMORY_UTILIZATION = 0.85  # leave room for a notebook's other tensors and a second process


@dataclass(frozen=True)
class EngineSettings:
    """Keyword arguments for `vllm.LLM` / `EngineArgs`, the environment vLLM reads, and why.

    Attributes:
        engine_kwargs: passed to `LLM(...)` or `EngineArgs(...)`.
        env: environment variables vLLM reads at engine start (set before the engine is built).
        reasons: one human sentence per decision, printed by every lab.
    """

    engine_kwargs: dict[str, object]
    env: dict[str, str]
    reasons: list[str]


def cpu_threads_bind(hw: Hardware, tensor_parallel_size: int) -> str:
    """`VLLM_CPU_OMP_THREADS_BIND` for `tensor_parallel_size` CPU workers: one core range each.

    Why: with fewer NUMA nodes than workers, vLLM's automatic binding refuses to start ("Not
    enough allowed NUMA nodes to bind threads"); an explicit '0|1' style split works.
    """
    cpu_ids = sorted(c for ids in hw.numa_node_cpu_ids.values() for c in ids)
    if tensor_parallel_size > len(cpu_ids):
        raise UnsupportedHardwareError(
            f"tensor_parallel_size={tensor_parallel_size} needs at least that many CPU cores; "
            f"this process may use {len(cpu_ids)}."
        )
    per_rank = len(cpu_ids) // tensor_parallel_size
    ranges = []
    for rank in range(tensor_parallel_size):
        ids = cpu_ids[rank * per_rank:(rank + 1) * per_rank]
        ranges.append(str(ids[0]) if len(ids) == 1 else f"{ids[0]}-{ids[-1]}")
    return "|".join(ranges)


def in_process_num_threads(hw: Hardware) -> tuple[int, str]:
    """OpenMP threads for a CPU engine that computes in this process, and the reason.

    Why the workbook decides this: vLLM applies `VLLM_CPU_OMP_THREADS_BIND` only to the worker
    processes its multiprocessing executor starts (it sets `OMP_NUM_THREADS`/`OMP_PLACES` before they
    load OpenMP). An engine kept in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`: the labs'
    inspectable engine, the debugger's single-process engine) would compute with torch's default,
    one thread per core of the machine; two such engines (two notebooks, or a notebook beside a
    server's worker) then spin against each other in OpenMP barriers. `benchmarks/in_process_threads.py`
    measures that side by side.

    Returns:
        (threads, reason): one thread per core of rank 0's binding when one is set, else
        `OMP_NUM_THREADS`, else one per core this process may use.
    """
    chosen = _chosen_num_threads()
    if chosen is not None:
        num_threads, source = chosen
        return num_threads, (f"Engine in this process: {num_threads} OpenMP thread(s), {source} "
                             "(vLLM binds only the worker processes it starts).")
    num_threads = sum(len(ids) for ids in hw.numa_node_cpu_ids.values())
    return num_threads, (f"Engine in this process: {num_threads} OpenMP thread(s), one per core it may use "
                         "(set VLLM_CPU_OMP_THREADS_BIND, e.g. 0-3, to give it fewer).")


def _chosen_num_threads() -> tuple[int, str] | None:
    """(threads, where from) when the user or a test worker chose them: one per core of rank 0's
    `VLLM_CPU_OMP_THREADS_BIND`, else `OMP_NUM_THREADS`; None when nobody did."""
    bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
    if bind not in ("auto", "nobind", ""):
        return len(parse_cpu_list(bind.split("|")[0])), f"one per core of VLLM_CPU_OMP_THREADS_BIND={bind}"
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return int(os.environ["OMP_NUM_THREADS"]), "as OMP_NUM_THREADS says"
    return None


SERVER_EXECUTORS = ("uni", "mp")  # vLLM's `distributed_executor_backend` names for TP=1


def server_executor(hw: Hardware, tensor_parallel_size: int = 1, executor: str | None = None) -> EngineSettings:
    """Where a server's model runner computes: inside the engine core ("uni") or in a worker process ("mp").

    Why the workbook decides this on a CPU: vLLM's CPU platform turns TP=1's in-process `uni`
    executor into `mp` so that it can bind the worker's OpenMP threads, which gives a CPU server
    three processes (API server, engine core, worker) where one GPU has two. On a CPU with few
    cores the engine core then busy-waits for its worker on the core the API server needs, and
    every start imports vLLM once more (~6 s on 2 cores). `python -m labs.core.bench.server_modes`
    measures both layouts side by side (figures in labs/core/serve/SERVING.md): with the runner in
    the engine core and one core left to the API server, throughput was the same within noise and a
    start ~5 s shorter (19 s against 14 s). So a CPU server with TP=1 runs the model in its
    engine core, as on one GPU, with `VLLM_ENABLE_V1_MULTIPROCESSING=0` (the CPU platform keeps `uni` only then) and
    `OMP_NUM_THREADS` sized here (vLLM binds only the workers it starts).

    Args:
        hw: from `detect_hardware()`.
        tensor_parallel_size: workers; with more than one, vLLM starts worker processes anyway.
        executor: "uni", "mp" (Lab 10's failures and a debugger per worker need worker processes),
            or None: "uni" for a CPU server with TP=1, vLLM's own choice otherwise.

    Returns:
        Settings to add to the server's: the executor flag when asked for, its environment, why.
    """
    if executor not in (None, *SERVER_EXECUTORS):
        raise ValueError(f"executor={executor!r}: use one of {SERVER_EXECUTORS} or None (decided by the hardware)")
    if tensor_parallel_size > 1 and executor == "uni":
        raise ValueError("executor='uni' runs one model runner: it cannot serve tensor_parallel_size > 1")
    if executor is None:
        if hw.device != "cpu" or tensor_parallel_size > 1 or debugging_workers():
            return EngineSettings({}, {}, [])  # vLLM's own layout (GPU: uni for TP=1); debuggers attach to workers
        executor = "uni"
    kwargs: dict[str, object] = {"distributed_executor_backend": executor}
    if executor == "mp":
        return EngineSettings(kwargs, {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}, [
            "Executor mp: the model runs in a worker process of its own (API server, engine core, worker)."])
    if hw.device != "cpu":
        return EngineSettings(kwargs, {}, ["Executor uni: the model runs inside the engine core process."])
    num_threads, why = server_num_threads(hw)
    return EngineSettings(kwargs, {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": str(num_threads)}, [
        f"Executor uni: the model runs inside the engine core process, as on one GPU (2 processes, not 3), "
        f"with {num_threads} OpenMP thread(s): {why}"])


def server_num_threads(hw: Hardware) -> tuple[int, str]:
    """OpenMP threads for a CPU server's engine core that runs the model itself, and why.

    Returns:
        (threads, reason): one per core of rank 0's `VLLM_CPU_OMP_THREADS_BIND` when set, else
        `OMP_NUM_THREADS` when set, else every core but one (the API server's, which streams the
        tokens; vLLM's own binding also reserves a core for the processes besides its workers).
    """
    chosen = _chosen_num_threads()
    if chosen is not None:
        return chosen[0], chosen[1] + "."
    num_cores = sum(len(ids) for ids in hw.numa_node_cpu_ids.values())
    return max(1, num_cores - 1), f"{num_cores} core(s), one left to the API server."


def check_kv_cache_dtype(hw: Hardware, kv_cache_dtype: str) -> None:
    """Refuse an fp8 KV cache where vLLM's CPU backend cannot run it, before the engine crashes."""
    if not kv_cache_dtype.startswith("fp8") or hw.device == "cuda":
        return
    if not (hw.has_avx512 or hw.has_amx):
        raise UnsupportedHardwareError(
            f"kv_cache_dtype={kv_cache_dtype!r} is not available on this CPU: vLLM's CPU backend "
            "needs x86 with AVX-512 or AMX for an FP8 KV cache, and this CPU "
            f"({hw.cpu_model}) has neither. Use kv_cache_dtype='auto' here, or run on a GPU "
            "or an AVX-512/AMX CPU (e.g. Intel Xeon Sapphire Rapids or newer)."
        )


def engine_settings(
    hw: Hardware,
    *,
    weights_bytes: int = 0,
    block_size: int | None = None,
    kv_cache_dtype: str = "auto",
    tensor_parallel_size: int = 1,
) -> EngineSettings:
    """Choose engine settings for `hw`; explicit arguments win where the hardware allows them.

    Args:
        hw: from `detect_hardware()`.
        weights_bytes: size of the model's weights, to size the CPU KV cache for big models.
        block_size: KV block size in tokens; None picks the backend's sensible default.
        kv_cache_dtype: "auto" or an fp8 variant (checked against the hardware).
        tensor_parallel_size: number of workers.

    Returns:
        The settings, with one reason per decision.
    """
    check_kv_cache_dtype(hw, kv_cache_dtype)
    kwargs: dict[str, object] = {"kv_cache_dtype": kv_cache_dtype, "tensor_parallel_size": tensor_parallel_size}
    env: dict[str, str] = {}
    reasons: list[str] = []
    if debugging_workers():
        check_ready_to_debug_workers(tensor_parallel_size)  # plugin installed, ports free
        env.update(DEBUG_ENGINE_ENV)
        reasons.append(f"{WORKER_DEBUG_ENV}=1: each vLLM worker listens for a debugger (the workbook's vLLM "
                       "plugin); workers are spawned so each loads it, and a worker paused at a breakpoint is "
                       "not declared dead after 300 s (VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS).")
    if hw.device == "cuda":
        kwargs["gpu_memory_utilization"] = GPU_MEMORY_UTILIZATION
        reasons.append(f"GPU found: vLLM may use {GPU_MEMORY_UTILIZATION:.0%} of its memory (weights + KV cache).")
        if block_size is not None:
            kwargs["block_size"] = block_size
        return EngineSettings(kwargs, env, reasons)

    # CPU backend.
    if block_size is None:
        block_size = CPU_BLOCK_SIZE
    elif block_size % 32:
        raise UnsupportedHardwareError(
            f"block_size={block_size} does not work on vLLM's CPU backend: its attention kernels "
            "need a multiple of 32 (32, 64, 128). GPUs also accept 16."
        )
    kwargs["block_size"] = block_size
    kwargs["enforce_eager"] = True
    reasons.append(f"No GPU: vLLM's CPU backend, block_size={block_size} (CPU attention needs a multiple of 32).")
    reasons.append("enforce_eager=True: no torch.compile/graph capture, so engine start is fast and steppable.")
    if "VLLM_CPU_KVCACHE_SPACE" in os.environ:
        reasons.append(f"KV cache: VLLM_CPU_KVCACHE_SPACE={os.environ['VLLM_CPU_KVCACHE_SPACE']} GiB (set by you).")
    else:
        if weights_bytes < 2**30:
            space = CPU_KVCACHE_SPACE_GIB_SMALL
        else:  # a real model: give the cache a quarter of RAM, but keep the rest for weights and us
            space = max(2, min(32, int(hw.total_memory_gib * 0.25)))
        env["VLLM_CPU_KVCACHE_SPACE"] = str(space)
        reasons.append(f"KV cache: {space} GiB of RAM (VLLM_CPU_KVCACHE_SPACE; set it yourself to change).")
    if tensor_parallel_size > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads_bind(hw, tensor_parallel_size)
        reasons.append(f"TP={tensor_parallel_size} on CPU: threads bound as {env['VLLM_CPU_OMP_THREADS_BIND']}.")
    return EngineSettings(kwargs, env, reasons)
