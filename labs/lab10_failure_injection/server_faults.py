"""Lab 10, parts 2 and 3: a vLLM server that hangs and one that crashes, seen as an operator sees them.

One real server (vLLM's OpenAI API server, started on a free port with its own log folder by
`labs.core.serve.owned_server`, the workbook's one way a test or notebook starts a server, so it is
stopped even when the run is killed) is put through four states, and at each one the lab takes
what an operator can take from outside: two `/metrics` readings a few seconds apart,
which of its three processes are alive (API server, engine core, model worker), `/health`, a
client request with a timeout, and `py-spy dump` of every process.

    running      one request streaming
    overloaded   more requests than `--max-num-seqs` at once: tokens flow, a queue builds
    hung         the worker paused (`WORKBOOK_FAULT_PAUSE_FILE`, injected by the workbook's vLLM
                 plugin): every process alive, /health 200, no token moves, the client times out
    crashed      the worker killed with SIGKILL mid-run: vLLM's monitors end the engine core and
                 the API server; the managed server's status says DOWN and a restart brings it back

The faults need nothing from `owned_server` but what any caller has: `--max-num-seqs` as extra
server flags, and the pause file and step timeout in the environment the server inherits. The
restart is the operator's: `stop` on the log folder (it says what it found: a hung server stopped,
a crashed one's stale pid file), then a new owned server there, without the pause armed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from labs.core.bench.server_metrics import fetch_metrics_text, parse_metrics
from labs.core.environ import environ_set
from labs.core.paths import RUNS_DIR
from labs.core.serve import OwnedServer, ServeError, owned_server, status, stop
from labs.core.serve.health import fetch_models
from labs.core.serve.manager import stop_command
from labs.core.serve.records import read_record
from labs.core.vllm_internals.failures import PAUSE_FILE_ENV
from labs.core.debug.pyspy import py_spy_dump

FAULTS_DIR = RUNS_DIR / "lab10"  # git-ignored
WATCHED = ("vllm:generation_tokens_total", "vllm:prompt_tokens_total", "vllm:request_success_total",
           "vllm:num_preemptions_total", "vllm:num_requests_running", "vllm:num_requests_waiting",
           "vllm:kv_cache_usage_perc")
ROLES = ("api_server", "engine_core", "worker")
MAX_NUM_SEQS = 2  # the server's batch limit: a burst of 6 makes a queue (the "overloaded" state)
# The engine waits this long for a worker's step before it gives up (vLLM's default is 300 s).
EXECUTE_MODEL_TIMEOUT_S = 60


@dataclass
class ServerState:
    """What an operator could see of the server at one moment.

    Attributes:
        label: what was done to the server ("running", "overloaded", "hung", "crashed"): the truth.
        before, after: `/metrics` counters and gauges (`WATCHED`) `interval_s` apart; None: no answer.
        processes: role -> alive ("api_server", "engine_core", "worker").
        health: the HTTP status of GET /health (None: no answer).
        threads: `py-spy dump` rows (pid, process, thread, state, frames), empty when not taken.
        notes: what the client and the logs said.
    """

    label: str
    before: dict[str, float] | None
    after: dict[str, float] | None
    interval_s: float
    processes: dict[str, bool]
    health: int | None
    threads: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def watched_metrics(url: str, api_key: str | None = None) -> dict[str, float] | None:
    """The `WATCHED` counters and gauges now, or None when /metrics does not answer."""
    try:
        snap = parse_metrics(fetch_metrics_text(url, api_key, timeout_s=5.0))
    except requests.RequestException:
        return None
    values = {**snap.counters, **snap.gauges}
    return {name: float(values.get(name, 0.0)) for name in WATCHED}


def server_processes(api_pid: int) -> dict[str, psutil.Process | None]:
    """The API server and its children by role, from the process titles vLLM sets (VLLM::EngineCore, ...)."""
    found: dict[str, psutil.Process | None] = dict.fromkeys(ROLES)
    try:
        api = psutil.Process(api_pid)
        found["api_server"] = api
        for child in api.children(recursive=True):
            title = (child.name() + " " + " ".join(child.cmdline())).lower()
            if "enginecore" in title:
                found["engine_core"] = child
            elif "worker" in title:
                found["worker"] = child
    except psutil.Error:
        pass
    return found


def alive(procs: dict[str, psutil.Process | None]) -> dict[str, bool]:
    """role -> running (a zombie counts as dead: it has exited, only its parent has not reaped it)."""
    out = {}
    for role, proc in procs.items():
        try:
            out[role] = proc is not None and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            out[role] = False
    return out


def health_status(url: str) -> int | None:
    try:
        return requests.get(f"{url}/health", timeout=5).status_code
    except requests.RequestException:
        return None


@dataclass
class FaultServer:
    """A server for this lab: its log folder (pid file, logs, PAUSE), the owned server in it now
    (replaced by a restart), the model it serves and its processes by role."""

    log_dir: Path
    owned: OwnedServer
    model: str
    procs: dict[str, psutil.Process | None] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.owned.url

    @property
    def pause_file(self) -> Path:
        return self.log_dir / "PAUSE"

    def refresh(self) -> None:
        record = read_record(self.log_dir)
        self.procs = server_processes(record.pid) if record else dict.fromkeys(ROLES)


def _owned_fault_server(log_dir: Path, pause_armed: bool, echo: Any) -> OwnedServer:
    """A new owned server in `log_dir` with the lab's flags and fault environment.

    The pause is armed through the environment the server inherits (`WORKBOOK_FAULT_PAUSE_FILE`;
    unset when not armed, so a restart cannot inherit it); nothing pauses until the file exists.
    Workers are spawned (a forked worker would skip vLLM's plugins, see
    labs/core/debug/vllm_workers.py).

    Raises:
        ServeError: it could not start, or a server was already up in `log_dir` (an earlier run's:
            a fault server must start fresh, with the pause armed as asked and no fault in it).
    """
    overrides: dict[str, str | None] = {"VLLM_WORKER_MULTIPROC_METHOD": "spawn",
                                        "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": str(EXECUTE_MODEL_TIMEOUT_S),
                                        PAUSE_FILE_ENV: str(log_dir / "PAUSE") if pause_armed else None}
    echo("Injected into the server's environment: "
         + " ".join(f"{k}={v}" for k, v in overrides.items() if v is not None))
    with environ_set(overrides):  # the server's environment is ours plus its settings (config.child_env)
        # executor="mp" on every machine: the lab's faults are a worker process's (paused, killed),
        # and the engine core's wait for it (MultiprocExecutor) is what the lab reads.
        owned = owned_server("vllm-lab10", log_dir=log_dir, extra_args=("--max-num-seqs", str(MAX_NUM_SEQS)),
                             executor="mp", timeout_s=600, echo=echo)
    if owned.reused:
        owned.stop(echo)  # lets go of it; it is not ours to stop
        raise ServeError(f"A server is already running from {log_dir}: stop it first: {stop_command(log_dir)}")
    return owned


def start_fault_server(log_dir: Path = FAULTS_DIR / "server", *, pause_armed: bool = True,
                       echo: Any = print) -> FaultServer:
    """Start the lab's server on a free port, its worker pausable through `<log_dir>/PAUSE`.

    Owned by this process (`owned_server`): `stop_server` stops it, and so does the owner's end,
    however it ends (a killed test run leaves no server behind).
    """
    log_dir = Path(log_dir).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "PAUSE").unlink(missing_ok=True)
    owned = _owned_fault_server(log_dir, pause_armed, echo)
    server = FaultServer(log_dir, owned, fetch_models(owned.url, owned.api_key)[0].id)
    server.refresh()
    return server


def restart_fault_server(server: FaultServer, echo: Any = print) -> None:
    """The operator's fix: stop what is left in the server's folder, then start it again without the pause armed.

    Why `stop` first and not only the owner's release: `stop` says what it found (a hung server
    stopped, a crashed one's stale pid file removed, or nothing), which is the lesson; the release
    after it only lets go of the old server's ownership. The new server is owned like the first,
    on a new free port (`server.url` follows it).
    """
    stop(log_dir=server.log_dir, grace_s=10, echo=echo)  # a hung server ignores SIGTERM: SIGKILL after 10 s
    server.owned.stop(echo)
    server.owned = _owned_fault_server(server.log_dir, pause_armed=False, echo=echo)
    server.refresh()


def send_completion(server: FaultServer, max_tokens: int, timeout_s: float, results: list[str] | None = None,
                    prompt: str = "こんにちは") -> str:
    """One completion; returns (and appends to `results`) what the client saw: ok, timeout, or the HTTP error."""
    body = {"model": server.model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0.0}
    try:
        reply = requests.post(f"{server.url}/v1/completions", json=body, timeout=timeout_s)
        seen = f"HTTP {reply.status_code}" + ("" if reply.ok else f": {reply.text[:300]}")
    except requests.Timeout:
        seen = f"client timeout: no answer within {timeout_s:g} s"
    except requests.ConnectionError as exc:
        seen = f"connection error: {type(exc).__name__}: {str(exc)[:200]}"
    if results is not None:
        results.append(seen)
    return seen


def in_background(server: FaultServer, num_requests: int, max_tokens: int, timeout_s: float) -> tuple[
        list[threading.Thread], list[str]]:
    """Send `num_requests` completions at once from threads; their outcomes land in the list."""
    results: list[str] = []
    threads = [threading.Thread(target=send_completion, args=(server, max_tokens, timeout_s, results), daemon=True)
               for _ in range(num_requests)]
    for t in threads:
        t.start()
    return threads, results


def observe(server: FaultServer, label: str, interval_s: float = 3.0, dump: bool = False) -> ServerState:
    """Take what an operator sees: /metrics twice, `interval_s` apart, processes, /health, py-spy."""
    before = watched_metrics(server.url)
    time.sleep(interval_s)
    after = watched_metrics(server.url)
    threads, notes = [], []
    if dump and server.procs.get("api_server") is not None:
        result = py_spy_dump(server.procs["api_server"].pid, timeout_s=60)
        threads = [{"pid": t.pid, "process": t.process, "thread": t.thread, "state": t.state, "frames": t.frames}
                   for t in result.threads]
        if result.problem:  # e.g. ptrace refused: say how to allow it instead of showing nothing
            notes.append(f"py-spy: {result.problem}")
    return ServerState(label, before, after, interval_s, alive(server.procs), health_status(server.url), threads,
                       notes)


def log_tail(server: FaultServer, num_lines: int = 40, needles: tuple[str, ...] = (
        "died unexpectedly", "EngineDeadError:", "TimeoutError", "Shutting down", "force killing")) -> list[str]:
    """The server log's lines that matter after a failure (the last `num_lines` matching ones)."""
    # The server's own logs (labs.core.serve.launch.new_log_path names them), not the owner's
    # watchdog.log in the same folder, which is written last when the server dies.
    record_log = sorted(server.log_dir.glob("vllm-*-port*.log"), key=lambda p: p.stat().st_mtime)
    if not record_log:
        return []
    lines = record_log[-1].read_text(errors="replace").splitlines()
    return [line for line in lines if any(n in line for n in needles)][-num_lines:]


def kill_worker(server: FaultServer) -> int | None:
    """SIGKILL the model worker (as the kernel's OOM killer or a crashed driver would): its pid."""
    worker = server.procs.get("worker")
    if worker is None:
        return None
    os.kill(worker.pid, signal.SIGKILL)
    return worker.pid


def wait_for(condition: Any, timeout_s: float, poll_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return condition()


def status_line(server: FaultServer) -> str:
    """What `python -m labs.core.serve status --log-dir ...` says about this server now."""
    return status(server.url, log_dir=server.log_dir).describe(server.log_dir)


def stop_server(server: FaultServer, echo: Any = print) -> None:
    """Release the server; as its only owner, that stops it (a hung one gets SIGKILL after 10 s)."""
    server.pause_file.unlink(missing_ok=True)
    server.owned.stop(echo)
