"""A debugpy listener in this process, on the port of its rank: for processes a debugger must attach to.

Used by Lab 4's ranks (`labs.lab4_tensor_parallel.comm.maybe_listen_for_debugger`) and by vLLM's
own workers (`labs.core.debug.vllm_workers`), so one compound launch configuration attaches to either.
"""

from __future__ import annotations

import os

from labs.core.debug.ports import DEBUG_HOST, DebugPortInUseError, debug_port, port_in_use_message, port_is_free

DEBUG_WAIT_ENV = "WORKBOOK_DEBUG_WAIT"  # "0": listen but do not wait for the debugger to attach


def listen_for_debugger(rank: int, who: str) -> int:
    """Listen on 127.0.0.1:(WORKBOOK_DEBUG_BASE_PORT or 5679) + rank; wait unless WORKBOOK_DEBUG_WAIT=0.

    Shared by Lab 4's ranks and vLLM's own workers (`labs.core.debug.vllm_workers`), so one compound
    launch configuration attaches to either.

    Why the debug adapter runs inside this process (`in_process_debug_adapter=True`): by default
    `debugpy.listen` spawns a separate adapter process that owns the port, daemonised out of this
    process group, and that adapter lives on after this process dies for as long as any debugger
    is still connected to it. Stopping a session (VS Code kills the debuggee's process group) would
    leave the ports taken, and the next launch would fail with "Address already in use". The rule:
    the port closes with this process however it ends, kill -9 included
    (tests/test_lab4_tensor_parallel_debug_ports.py stops a real session and launches again on the
    same ports). What in-process gives up, following spawned subprocesses, is off here anyway
    (`subProcess=False`).

    Args:
        rank: the global rank (its port is the base port + rank).
        who: how the printed line names this process, e.g. "rank 1", "vLLM worker rank 0".

    Returns:
        The port it listens on.

    Raises:
        DebugPortInUseError: the port is taken; the message names the holder and how to end it.
    """
    import debugpy

    port = debug_port(rank)
    # Checked first: an in-process listener that cannot bind fails in a background thread, and
    # `debugpy.listen` would then wait for its socket forever instead of raising.
    if not port_is_free(port):
        raise DebugPortInUseError(port_in_use_message(port, who))
    # Not into subprocesses: a vLLM worker runs helpers (torch inductor's ISA probe, compile
    # workers) that would each wait for a debugger nobody attaches, and hang the worker.
    debugpy.configure(subProcess=False)
    debugpy.listen((DEBUG_HOST, port), in_process_debug_adapter=True)
    wait = os.environ.get(DEBUG_WAIT_ENV, "1") != "0"
    print(f"{who}: debugpy listening on {DEBUG_HOST}:{port}" + (", waiting for the debugger" if wait else ""),
          flush=True)
    if wait:
        debugpy.wait_for_client()
    return port
