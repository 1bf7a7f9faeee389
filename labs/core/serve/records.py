"""The pid file (`logs/vllm.pid`) and the processes behind it: is the server alive, and ending it.

Why a process *group*: the server is several processes. The API server (`APIServer` in the
log) starts an engine core (`EngineCore`), which starts a worker (`Worker`); in background mode
`tee` copies their output to the log. They share one process group, so one signal to the group
reaches all of them, and "the group is empty" is what "stopped" means.

Why a create time next to the pid: pids are recycled (on Linux after 32,768 by default), so "a
process with that pid exists" is not "our server is alive"; the pid *and* its start time are.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

PID_FILE_NAME = "vllm.pid"
CREATE_TIME_TOLERANCE_S = 1.0  # psutil's create time is rounded to clock ticks


@dataclass(frozen=True)
class ServerRecord:
    """What `logs/vllm.pid` holds (as JSON) about the server the workbook started.

    Attributes:
        pid: the API server process (`python -m vllm.entrypoints.openai.api_server`).
        pgid: its process group: what `stop` signals.
        create_time: when `pid` started (seconds since the epoch), to recognise a recycled pid.
        host: the address it binds.
        port: the port it binds.
        model: the model folder or hub id (`--model`).
        served_model_name: the name clients use (`--served-model-name`).
        log_path: its log file.
        launcher: "tmux", "process" (detached process group) or "foreground".
        tmux_session: the tmux session running it, if any.
        started_at: local time of the start, ISO 8601.
        command: the command line as shown to people (API key masked).
    """

    pid: int
    pgid: int
    create_time: float
    host: str
    port: int
    model: str
    served_model_name: str
    log_path: str
    launcher: str
    tmux_session: str | None
    started_at: str
    command: str

    def describe(self) -> str:
        """One line naming the server: model, pid, port, where it runs."""
        where = f", tmux session '{self.tmux_session}'" if self.tmux_session else f", {self.launcher} mode"
        return (f"model '{self.served_model_name}' ({self.model}), pid {self.pid}, port {self.port}"
                f"{where}, started {self.started_at}")


def pid_file(log_dir: Path) -> Path:
    return log_dir / PID_FILE_NAME


def read_record(log_dir: Path) -> ServerRecord | None:
    """The recorded server, or None when there is no pid file (an unreadable one is removed)."""
    path = pid_file(log_dir)
    try:
        return ServerRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):  # half-written or from another version: it cannot name a server
        path.unlink(missing_ok=True)
        return None


def write_record(log_dir: Path, record: ServerRecord) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    tmp = pid_file(log_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    tmp.replace(pid_file(log_dir))  # atomic: a concurrent `status` never reads half a file


def remove_record(log_dir: Path, pid: int | None = None) -> None:
    """Delete the pid file; with `pid`, only if it still names that server (not a newer one)."""
    record = read_record(log_dir)
    if record is not None and (pid is None or record.pid == pid):
        pid_file(log_dir).unlink(missing_ok=True)


def _is_live(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE  # a zombie has exited; only its parent's wait is missing
    except psutil.Error:
        return False


def process_create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def process_alive(pid: int, create_time: float | None = None) -> bool:
    """True if `pid` runs (not a zombie) and, when given, started at `create_time`."""
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > CREATE_TIME_TOLERANCE_S:
            return False  # the pid was recycled for another program
    except psutil.Error:
        return False
    return _is_live(proc)


def group_members(pgid: int) -> list[psutil.Process]:
    """The live processes of process group `pgid`."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and _is_live(proc):
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def describe_processes(procs: list[psutil.Process]) -> list[str]:
    """'pid 123: VLLM::EngineCore' lines (vLLM names its processes, so this shows the structure)."""
    lines = []
    for proc in procs:
        try:
            lines.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:100] or proc.name()}")
        except psutil.Error:
            continue
    return lines


def looks_like_vllm(proc: psutil.Process) -> bool:
    """A leftover of our server: vLLM's own process titles, or our command line."""
    try:
        return "vllm" in (proc.name() + " " + " ".join(proc.cmdline())).lower()
    except psutil.Error:
        return False


def find_server_process(root_pid: int, module: str, timeout_s: float = 30.0) -> psutil.Process | None:
    """The process running `python -m <module>` at or under `root_pid`, once it has started.

    Why search: the launcher (tmux's pane shell, `script`) starts the server itself, so its pid
    is known only by looking at the launcher's children.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            root = psutil.Process(root_pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return None
        matches = {}
        for proc in tree:
            try:
                if module in proc.cmdline():
                    matches[proc.pid] = proc
            except psutil.Error:
                continue
        for proc in matches.values():  # a forked child shows its parent's command line: skip it
            try:
                if proc.ppid() not in matches:
                    return proc
            except psutil.Error:
                continue
        time.sleep(0.1)
    return None


def _reap(pid: int) -> None:
    """Collect the exit status of our own child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: its parent (tmux, init) reaps it
        pass


def _wait_for(condition: Callable[[], bool], timeout_s: float, reap_pids: set[int]) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        for pid in reap_pids:
            _reap(pid)
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def end_process_group(pgid: int, leader_pid: int | None = None, grace_s: float = 20.0) -> list[str]:
    """Stop a server's process group: SIGTERM, a grace period, then SIGKILL for what is left.

    Why the API server (`leader_pid`) first: on SIGTERM it stops its engine core and worker,
    frees their shared memory and logs each step while `tee` (same group) still copies the log;
    signalling the whole group at once would kill `tee` first and lose those lines. SIGKILL,
    which skips all clean-up, is only the fallback for a process that hangs.

    Returns:
        Notes for the user (empty when the group ended cleanly).
    """
    notes: list[str] = []
    member_pids = {p.pid for p in group_members(pgid)}

    def group_gone() -> bool:
        return not group_members(pgid)

    if leader_pid is not None and process_alive(leader_pid):
        try:
            os.kill(leader_pid, signal.SIGTERM)
        except ProcessLookupError:  # it just exited
            pass
        if not _wait_for(lambda: not process_alive(leader_pid), grace_s, member_pids):
            notes.append(f"the API server (pid {leader_pid}) ignored SIGTERM for {grace_s:.0f} s.")
        _wait_for(group_gone, 3.0, member_pids)  # tee drains the pipe, the engine core exits
    for sig, wait_s in ((signal.SIGTERM, 5.0 if leader_pid else grace_s), (signal.SIGKILL, 10.0)):
        if group_gone():
            break
        if sig == signal.SIGKILL:
            notes.append(f"{describe_processes(group_members(pgid))} ignored SIGTERM: sent SIGKILL.")
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        _wait_for(group_gone, wait_s, member_pids)
    if not group_gone():
        notes.append(f"process group {pgid} still has processes: {describe_processes(group_members(pgid))}")
    return notes


def end_processes(procs: list[psutil.Process], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s`, a list of processes (leftovers of a dead server)."""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5.0)
