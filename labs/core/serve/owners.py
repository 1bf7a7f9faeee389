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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from labs.core.serve.launch import kill_tmux_session, tmux_pane_pid
from labs.core.serve.manager import stop
from labs.core.serve.records import (
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
        """This process.

        Returns:
            Its pid and start time.
        """
        return cls(os.getpid(), process_create_time(os.getpid()) or 0.0)

    @classmethod
    def of(cls, pid: int) -> Proc:
        """A running process, by pid.

        Args:
            pid: its process id.

        Returns:
            It, with its start time (0.0 if it has already exited).
        """
        return cls(pid, process_create_time(pid) or 0.0)

    def alive(self) -> bool:
        """Whether it still runs (not a zombie, and its pid not recycled for another program).

        Returns:
            True while it runs.
        """
        return process_alive(self.pid, self.create_time)

    def same(self, other: Proc) -> bool:
        """Whether `other` is this process (same pid, same start time within psutil's rounding).

        Args:
            other: the process to compare.

        Returns:
            True if they are one process.
        """
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
        created: when this ownership began (seconds since the epoch): a tmux session of its name
            whose pane is older is not its server's.
    """

    session: str
    port: int
    owners: list[Proc] = field(default_factory=list)
    watchdog: Proc | None = None
    server: Proc | None = None
    created: float = field(default_factory=time.time)

    def live_owners(self) -> list[Proc]:
        """The owners still running."""
        return [owner for owner in self.owners if owner.alive()]

    def has(self, proc: Proc) -> bool:
        """Whether `proc` is one of the owners."""
        return any(owner.same(proc) for owner in self.owners)


@contextmanager
def locked(log_dir: Path) -> Iterator[None]:
    """Hold the folder's ownership lock (blocks while another process holds it).

    Args:
        log_dir: the server's log folder (created if missing; the lock file lives there).

    Yields:
        Nothing; the lock is held until the `with` block ends, or its holder dies.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / LOCK_FILE_NAME, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def read(log_dir: Path) -> Ownership | None:
    """Read the folder's owners file.

    Args:
        log_dir: the server's log folder.

    Returns:
        Its ownership, or None (no owned server, or an unreadable file).
    """
    try:
        data = json.loads((log_dir / OWNERS_FILE_NAME).read_text())
        procs = {key: Proc(**data[key]) if data.get(key) else None for key in ("watchdog", "server")}
        return Ownership(data["session"], data["port"], [Proc(**o) for o in data["owners"]], **procs,
                         created=float(data.get("created", 0.0)))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def write(log_dir: Path, ownership: Ownership) -> None:
    """Replace the folder's owners file, atomically.

    Args:
        log_dir: the server's log folder.
        ownership: what to record.
    """
    path = log_dir / OWNERS_FILE_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(ownership), indent=2) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file


def remove(log_dir: Path) -> None:
    """Delete the folder's owners file (no owned server any more); a missing one is fine.

    Args:
        log_dir: the server's log folder.
    """
    (log_dir / OWNERS_FILE_NAME).unlink(missing_ok=True)


def _our_pane(ownership: Ownership) -> psutil.Process | None:
    """The first process of the tmux session chosen for this server, if that session is ours.

    Why the pane and nothing wider: the pane's process becomes the API server (`labs.core.serve.pane`
    execs it), so its pid is the server's process group. A session of that name that existed
    before this ownership began (someone else's) is not ours, and neither is any other server on
    the port (a port race: another program may hold the port we picked).
    """
    pid = tmux_pane_pid(ownership.session)
    if pid is None:
        return None
    try:
        pane = psutil.Process(pid)
        if pane.create_time() < ownership.created - CREATE_TIME_TOLERANCE_S:
            return None
    except psutil.Error:
        return None
    return pane


def end_server(log_dir: Path, ownership: Ownership, echo: Callable[[str], None]) -> None:
    """Stop an owned server: its whole process group and its tmux session, and nothing else.

    Args:
        log_dir: its log folder (pid file).
        ownership: what the owners file says about it (its tmux session finds it before its pid
            file is written).
        echo: where messages go.
    """
    if read_record(log_dir) is not None:
        stop(log_dir=log_dir, grace_s=STOP_GRACE_S, echo=echo)
        return
    pane = _our_pane(ownership)
    if pane is None:
        return
    echo(f"Stopping the unrecorded vLLM server of {log_dir} (pid {pane.pid}, tmux session '{ownership.session}').")
    end_process_group(pane.pid, pane.pid, STOP_GRACE_S)
    kill_tmux_session(ownership.session, pane.pid)
