"""Who holds a TCP port: asked of the OS, with no workbook imports.

Why a leaf module: both serving (`labs.core.serve`: is the server's port free?) and debugging
(`labs.core.debug.ports`: is a rank's debugger port free, and who holds it?) ask this. Kept in
`labs.core.serve.health`, the debug side imported the `labs.core.serve` package, whose `__init__`
reaches the engine factory, which reaches the debug side again: an import circle
(tests/test_layout.py). A module that imports nothing of the workbook cannot be on a circle.
"""

from __future__ import annotations

import errno
import socket

import psutil


def port_is_free(host: str, port: int) -> bool:
    """True if a server could bind `host`:`port` now (tested by binding it, as vLLM will).

    SO_REUSEADDR, as uvicorn and debugpy's listener set it: connections of an ended session that
    linger in TIME_WAIT do not block a new listener, only a live one does.

    Args:
        host: the address the listener binds ("::1"-style addresses bind IPv6).
        port: the TCP port.

    Returns:
        True if a bind succeeded (the probe socket is closed again at once).

    Raises:
        OSError: a bind failure other than "in use" or "not allowed" (e.g. an address not on this host).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_listener(port: int) -> tuple[int | None, str] | None:
    """The process listening on TCP `port`, as far as this user may see it.

    Args:
        port: the TCP port.

    Returns:
        (its pid, its command line, or its name if that is empty); (None, "") if something
        listens there that this user cannot see, or if the OS does not list connections to this
        user (macOS without root); None if nothing listens.
    """
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None, ""
    listeners = [c for c in connections if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN]
    if not listeners:
        return None
    pid = next((c.pid for c in listeners if c.pid), None)
    if pid is None:
        return None, ""
    try:
        process = psutil.Process(pid)
        return pid, " ".join(process.cmdline()) or process.name()
    except psutil.Error:  # it ended meanwhile, or is not ours to read
        return pid, ""
