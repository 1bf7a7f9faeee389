"""Who owns a notebook's server: `owners.json` next to its pid file, read and changed under a lock.

Why a file of owners and not one watchdog per owner: a second run of a notebook (or a second
kernel) reuses the server the first one started, so the server must live while *any* of its
owners lives and stop when the last one is gone; one watchdog per server reads this list.

Why `flock`: the owner holds the lock while it starts the server (tens of seconds), so a second
owner waits and then reuses it instead of starting another; the kernel drops the lock when its
holder dies, so a watchdog waiting on it takes over from an owner killed mid-start.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from labs.serve.config import SERVER_MODULE
from labs.serve.launch import kill_tmux_session
from labs.serve.manager import stop
from labs.serve.records import (
    CREATE_TIME_TOLERANCE_S, end_process_group, process_alive, process_create_time, read_record,
)

OWNERS_FILE_NAME = "owners.json"
LOCK_FILE_NAME = "owners.lock"
STOP_GRACE_S = 10.0  # SIGTERM -> SIGKILL; a tiny model's server stops in ~3 s


@dataclass(frozen=True)
class Proc:
    """A process, recognised by pid *and* start time (pids are recycled).

    Attributes:
        pid: the process id.
        create_time: when it started, seconds since the epoch (psutil's).
    """

    pid: int
    create_time: float

    @classmethod
    def current(cls) -> Proc:
        return cls(os.getpid(), process_create_time(os.getpid()) or 0.0)

    @classmethod
    def of(cls, pid: int) -> Proc:
        return cls(pid, process_create_time(pid) or 0.0)

    def alive(self) -> bool:
        return process_alive(self.pid, self.create_time)

    def same(self, other: Proc) -> bool:
        return self.pid == other.pid and abs(self.create_time - other.create_time) <= CREATE_TIME_TOLERANCE_S


@dataclass
class Ownership:
    """What `owners.json` holds about one owned server.

    Attributes:
        session: the tmux session name chosen for it (known before it is recorded).
        port: its port (finds it when its owner died before the pid file was written).
        owners: the processes that use it; it stops once none of them is alive.
        watchdog: the process that stops it when the last owner dies without saying so.
        server: its API server, once started.
    """

    session: str
    port: int
    owners: list[Proc] = field(default_factory=list)
    watchdog: Proc | None = None
    server: Proc | None = None

    def live_owners(self) -> list[Proc]:
        return [owner for owner in self.owners if owner.alive()]

    def has(self, proc: Proc) -> bool:
        return any(owner.same(proc) for owner in self.owners)


@contextmanager
def locked(log_dir: Path) -> Iterator[None]:
    """Hold the folder's ownership lock (blocks while another process holds it)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / LOCK_FILE_NAME, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def read(log_dir: Path) -> Ownership | None:
    """The folder's ownership, or None (no owned server, or an unreadable file)."""
    try:
        data = json.loads((log_dir / OWNERS_FILE_NAME).read_text())
        procs = {key: Proc(**data[key]) if data.get(key) else None for key in ("watchdog", "server")}
        return Ownership(data["session"], data["port"], [Proc(**o) for o in data["owners"]], **procs)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def write(log_dir: Path, ownership: Ownership) -> None:
    path = log_dir / OWNERS_FILE_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(ownership), indent=2) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file


def remove(log_dir: Path) -> None:
    (log_dir / OWNERS_FILE_NAME).unlink(missing_ok=True)


def _unrecorded_servers(port: int) -> list[psutil.Process]:
    """vLLM API servers on `port` (started, but its owner died before writing the pid file)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            argv = proc.cmdline()
            if SERVER_MODULE in argv and argv[argv.index("--port") + 1] == str(port):
                found[proc.pid] = proc
        except (psutil.Error, ValueError, IndexError):
            continue
    roots = []
    for proc in found.values():  # a forked child shows its parent's command line: skip it
        try:
            if proc.ppid() not in found:
                roots.append(proc)
        except psutil.Error:
            continue
    return roots


def end_server(log_dir: Path, ownership: Ownership, echo: Callable[[str], None]) -> None:
    """Stop an owned server: its whole process group and its tmux session.

    Args:
        log_dir: its log folder (pid file).
        ownership: what the owners file says about it (port and session find an unrecorded one).
        echo: where messages go.
    """
    if read_record(log_dir) is not None:
        stop(log_dir=log_dir, grace_s=STOP_GRACE_S, echo=echo)
        return
    for proc in _unrecorded_servers(ownership.port):
        try:
            pgid = os.getpgid(proc.pid)
        except ProcessLookupError:  # it has just exited
            continue
        echo(f"Stopping the unrecorded vLLM server of {log_dir} (pid {proc.pid}, port {ownership.port}).")
        end_process_group(pgid, proc.pid, STOP_GRACE_S)
        kill_tmux_session(ownership.session, pgid)
