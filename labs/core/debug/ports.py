"""The debugger ports of tensor-parallel ranks: which port a rank uses, and who holds it if it is taken.

The rule: a rank's debugger port is checked before anything listens on it, in the process that
starts the ranks or the engine, and a taken one is refused with one sentence naming the holder
(pid, command) and how to end it. Unchecked, a port held by another process (a debugpy adapter
left by an earlier debug session, an old run still waiting for its debugger, anything else) ends
the launch deep in vLLM's worker start-up with "Address already in use", and a listener in the
debuggee's own process (see `labs.core.debug.listener`) waits forever.
tests/test_lab4_tensor_parallel_debug_ports.py checks both paths with a real foreign listener.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from labs.core import net
from labs.core.errors import WorkbookError

DEBUG_HOST = "127.0.0.1"
DEBUG_BASE_PORT_ENV = "WORKBOOK_DEBUG_BASE_PORT"
DEFAULT_DEBUG_BASE_PORT = 5679  # rank r listens on 5679 + r; 5678 is the workbook's single attach port


class DebugPortInUseError(WorkbookError):
    """A rank's debugger port is already taken; the message names the holder and how to end it."""


@dataclass(frozen=True)
class PortHolder:
    """The process listening on a port, as far as this user may see it.

    Attributes:
        pid: its process id, or None when the OS does not tell this user (another user's process).
        command: its command line, shortened for one sentence ("" when unknown).
    """

    pid: int | None
    command: str


def debug_port(rank: int) -> int:
    """The port rank `rank` listens on: WORKBOOK_DEBUG_BASE_PORT (default 5679) + rank.

    Args:
        rank: the global rank of the process (workbook rank or vLLM worker).

    Returns:
        The TCP port on 127.0.0.1.
    """
    return int(os.environ.get(DEBUG_BASE_PORT_ENV, DEFAULT_DEBUG_BASE_PORT)) + rank


def port_is_free(port: int, host: str = DEBUG_HOST) -> bool:
    """Whether a listener could bind `host:port` now (`labs.core.net.port_is_free`).

    SO_REUSEADDR as debugpy's listener sets it: connections of an ended session that linger in
    TIME_WAIT do not block a new listener, only a live one does, so only a live one is reported.

    Args:
        port: the TCP port.
        host: the address the listener binds.

    Returns:
        True if a bind succeeded (the probe socket is closed again at once).
    """
    return net.port_is_free(host, port)


def port_holder(port: int) -> PortHolder | None:
    """Find the process listening on TCP `port` (`labs.core.net.port_listener`).

    Args:
        port: the TCP port.

    Returns:
        Its holder; a holder with pid None if something listens there that this user cannot see;
        None if nothing listens.
    """
    listener = net.port_listener(port)
    if listener is None:
        return None
    pid, command = listener
    return PortHolder(pid, command if len(command) <= 160 else command[:157] + "...")


def _describe(command: str) -> str:
    """What a holder probably is, from its command line (the two left-overs a learner meets)."""
    if "debugpy" in command and "adapter" in command:
        return "a debugpy adapter left by an earlier debug session"
    # Spawned ranks show multiprocessing's command line; vLLM retitles its workers "VLLM::Worker...".
    if "multiprocessing" in command or "VLLM::" in command:
        return "a process spawned by an earlier run that is still running (a rank or a vLLM worker)"
    return "another process"


def port_in_use_message(port: int, who: str) -> str:
    """One sentence: which process holds `port`, and how to end it.

    Args:
        port: the taken port.
        who: whose debugger port it is, e.g. "rank 1" or "vLLM worker rank 0".

    Returns:
        The message (no traceback needed to act on it).
    """
    holder = port_holder(port)
    move = f"or move the ports with {DEBUG_BASE_PORT_ENV}=<another base port>"
    if holder is not None and holder.pid is not None:
        what = _describe(holder.command)
        return (f"{DEBUG_HOST}:{port}, the debugger port of {who}, is held by pid {holder.pid} ({holder.command}): "
                f"{what}; end it with `kill {holder.pid}` and start again, {move}.")
    return (f"{DEBUG_HOST}:{port}, the debugger port of {who}, is already in use by a process this user cannot "
            f"see; find it with `ss -ltnp 'sport = :{port}'` (or `lsof -i :{port}`) and end it, {move}.")


def check_debug_ports_free(ranks: range | list[int], who: str = "rank") -> None:
    """Raise, naming the holder, if any of these ranks' debugger ports is taken.

    Args:
        ranks: the ranks that will listen.
        who: how to name a rank in the message ("rank", "vLLM worker rank").

    Raises:
        DebugPortInUseError: the first taken port, with its holder and how to end it.
    """
    for rank in ranks:
        port = debug_port(rank)
        if not port_is_free(port):
            raise DebugPortInUseError(port_in_use_message(port, f"{who} {rank}"))
