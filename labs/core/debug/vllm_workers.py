"""A debugpy listener in each of vLLM's OWN tensor-parallel workers (a vLLM general plugin).

Why a plugin: vLLM starts its TP workers itself (`MultiprocExecutor`, processes named
`VllmWorker-<rank>`), so no workbook code runs in them, and a debugger attached to the script
never reaches them. vLLM calls every `vllm.general_plugins` entry point in each process it
starts, worker included (`WorkerWrapperBase.init_worker` -> `load_general_plugins`); the
workbook registers `register` below in pyproject.toml. It does nothing unless
WORKBOOK_DEBUG_VLLM_WORKERS=1, and then only in a worker: rank r listens on
127.0.0.1:5679+r, the ports the compound "Lab 4: attach to tensor-parallel ranks 0 and 1" attaches to.

Two engine settings go with it (added by `labs.core.engine_settings.engine_settings`, with reasons):
  - VLLM_WORKER_MULTIPROC_METHOD=spawn: a forked worker inherits its parent's "plugins already
    loaded" flag and would skip the plugin (GPUs fork unless CUDA is initialised; CPUs spawn).
  - VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS=86400: the engine declares a worker dead when a step takes
    longer than 300 s, which a worker paused at a breakpoint soon does.
"""

from __future__ import annotations

import multiprocessing
import os
from importlib.metadata import entry_points

from labs.core.errors import WorkbookError

WORKER_DEBUG_ENV = "WORKBOOK_DEBUG_VLLM_WORKERS"  # "1": each vLLM worker opens a debugpy listener
PLUGIN_GROUP = "vllm.general_plugins"
PLUGIN_NAME = "workbook_debug_workers"
DEBUG_ENGINE_ENV = {
    "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
    "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "86400",
}


def debugging_workers() -> bool:
    return os.environ.get(WORKER_DEBUG_ENV, "0") == "1"


def worker_rank(process_name: str | None = None) -> int | None:
    """The global rank of this vLLM worker process, or None if this is not one."""
    from labs.core.vllm_internals import worker_process_rank  # vLLM's naming, behind the version-checked door

    return worker_process_rank(process_name or multiprocessing.current_process().name)


def register() -> None:
    """vLLM calls this in every process that loads plugins; only a worker, when asked, listens.

    It also arms Lab 10's injected hang when `WORKBOOK_FAULT_PAUSE_FILE` is set (only then is
    anything imported): `labs.core.vllm_internals.failures.install_worker_pause`.
    """
    if os.environ.get("WORKBOOK_FAULT_PAUSE_FILE"):
        from labs.core.vllm_internals.failures import install_worker_pause

        install_worker_pause(multiprocessing.current_process().name)
    if not debugging_workers():
        return
    rank = worker_rank()
    if rank is not None:
        from labs.core.debug.listener import listen_for_debugger  # debugpy: only in a worker being debugged

        listen_for_debugger(rank, who=f"vLLM worker rank {rank}")


def check_ready_to_debug_workers(tensor_parallel_size: int) -> None:
    """Raise with the fix if vLLM's workers could not open their listeners: no plugin, or a taken port.

    Called in the process that starts the engine (`labs.core.engine_settings.engine_settings`), so a port held
    by a left-over process is named in one sentence before vLLM starts any worker, instead of a
    worker dying with "Address already in use" deep in vLLM's start-up.

    Args:
        tensor_parallel_size: the engine's workers; worker rank r listens on the base port + r.

    Raises:
        WorkbookError: the plugin would not run, or a worker's port is taken (`DebugPortInUseError`,
            naming the holder).
    """
    from labs.core.debug.ports import check_debug_ports_free

    check_plugin_registered()
    check_debug_ports_free(range(tensor_parallel_size), who="vLLM worker rank")


def check_plugin_registered() -> None:
    """Raise with the fix if vLLM would not call `register` in its workers."""
    names = {ep.name for ep in entry_points(group=PLUGIN_GROUP)}
    if PLUGIN_NAME not in names:
        raise WorkbookError(f"{WORKER_DEBUG_ENV}=1, but the workbook's vLLM plugin '{PLUGIN_NAME}' is not "
                            "installed, so vLLM's workers would start without a debugger listener. "
                            "Install the workbook into this environment: `pip install -e .` (make setup does).")
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and PLUGIN_NAME not in allowed.split(","):
        raise WorkbookError(f"{WORKER_DEBUG_ENV}=1, but VLLM_PLUGINS={allowed!r} leaves out '{PLUGIN_NAME}': "
                            f"add it (VLLM_PLUGINS={allowed},{PLUGIN_NAME}) or unset VLLM_PLUGINS.")
