"""Tensor-parallel debugging twice in a row: a stopped session must leave the ports free.

The rule: the debugger ports of the ranks (127.0.0.1:5679+rank) close with the ranks' processes
however they end, so the next launch of vLLM's TP workers gets them instead of dying with
"Address already in use" inside vLLM's worker start-up (a debugpy adapter in its own process
outlives its killed debuggee: see `labs.core.debug.listener`). These tests drive that path with
real processes and real debugpy: a session of the ranks, attached and stopped at the all-reduce,
is killed as VS Code's stop kills it (debugpy's launcher SIGKILLs the debuggee's process group,
while the attached debuggers are still connected), then the next launch runs on the same ports.
And a port held by some other process must be named (pid, command, `kill <pid>`) in one sentence,
before any rank or worker starts.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `dap_client`, whatever pytest's import mode
from dap_client import DAPClient, attach, consecutive_free_ports, kill_tree, tail  # noqa: E402

pytestmark = pytest.mark.all_cores  # TP=2 on the CPU: a core per rank (tests/workers.py)

REPO = Path(__file__).resolve().parents[1]
PORTS = range(18300, 18398)  # this module's ports: nothing else on the machine uses them
STEP2 = "my_debug_scripts/step4_tensor_parallel.py"


def launch_step4(args: list[str], switch: str, base: int, log: Path) -> subprocess.Popen[bytes]:
    """Start step4 as VS Code's launch configuration does: its own process group, output to `log`."""
    env = {**os.environ, switch: "1", "WORKBOOK_DEBUG_BASE_PORT": str(base), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, STEP2, *args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_text(log: Path, proc: subprocess.Popen[bytes], texts: list[str], timeout_s: float) -> None:
    """Wait until every one of `texts` is in the log; fail with the log's tail if the process ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if all(t in text for t in texts):
            return
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before printing {texts}:\n{tail(log)}")
        time.sleep(0.5)
    pytest.fail(f"no {texts} within {timeout_s:.0f} s:\n{tail(log)}")


def comm_breakpoint() -> tuple[str, int]:
    from labs.lab4_tensor_parallel import comm

    path = Path(comm.__file__)  # wherever the module lives
    (line,) = [n for n, text in enumerate(path.read_text().splitlines(), 1) if "# BREAKPOINT: the all-reduce" in text]
    return str(path), line


@pytest.fixture
def log_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tp-debug-ports-") as tmp:
        yield Path(tmp)


@pytest.mark.debugger
def test_a_stopped_rank_session_leaves_the_ports_to_vllms_workers(log_dir: Path) -> None:
    base = consecutive_free_ports(2, PORTS)
    bp_file, bp_line = comm_breakpoint()
    clients: list[DAPClient] = []
    first = launch_step4([], "WORKBOOK_DEBUG_RANKS", base, log_dir / "ranks.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        for rank in (0, 1):
            clients.append(attach(base + rank, first, bp_file, bp_line))
        for client in clients:  # both ranks paused at the all-reduce: a session in full swing
            client.wait_event("stopped", timeout=180, predicate=lambda b: b.get("reason") == "breakpoint")
        kill_tree(first)  # VS Code's stop: SIGKILL to the debuggee's process group; debuggers still attached

        second = launch_step4(["--vllm-only"], "WORKBOOK_DEBUG_VLLM_WORKERS", base, log_dir / "workers.log")
        wait_for_text(log_dir / "workers.log", second,
                      [f"vLLM worker rank {r}: debugpy listening on 127.0.0.1:{base + r}" for r in (0, 1)], 240)
        for rank in (0, 1):  # the listeners answering are the new workers': attach and look at a thread
            with attach(base + rank, second) as worker:
                assert worker.request("threads")["threads"], f"vLLM worker rank {rank} shows no threads"
    finally:
        for client in clients:
            client.close()  # a separate debugpy adapter would live on until this (see labs.core.debug.listener)
        kill_tree(first)
        if second is not None:
            kill_tree(second)


@pytest.fixture
def foreign_listener() -> Iterator[tuple[int, int]]:
    """A process that is not ours to debug, listening on rank 1's port; yields (base port, its pid)."""
    base = consecutive_free_ports(2, PORTS)
    # SO_REUSEADDR: an earlier test's connections to this port may linger in TIME_WAIT
    code = ("import socket, sys, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); print('ready', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(base + 1)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        yield base, holder.pid
    finally:
        holder.kill()
        holder.wait(timeout=10)


def assert_names_the_holder(message: str, port: int, pid: int) -> None:
    assert f"127.0.0.1:{port}" in message and f"pid {pid}" in message, message
    assert f"`kill {pid}`" in message and "-c import socket" in message, message  # the holder's command line


def test_a_foreign_listener_stops_the_ranks_before_they_start(foreign_listener: tuple[int, int],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from labs.lab4_tensor_parallel import checks
    from labs.core.debug.ports import DebugPortInUseError
    from labs.lab4_tensor_parallel.launcher import run_ranks

    base, pid = foreign_listener
    monkeypatch.setenv("WORKBOOK_DEBUG_RANKS", "1")
    monkeypatch.setenv("WORKBOOK_DEBUG_BASE_PORT", str(base))
    monkeypatch.setenv("WORKBOOK_DEBUG_WAIT", "0")  # a rank started by mistake must not wait for a debugger

    def no_rank_may_start(process: multiprocessing.process.BaseProcess) -> None:
        raise AssertionError(f"{process.name} was started: the taken port must be refused before any rank starts")

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", no_rank_may_start)
    with pytest.raises(DebugPortInUseError) as raised:
        run_ranks(checks.equivalence_task, ("/no-such-model", None), world_size=2, timeout_s=60)
    assert_names_the_holder(str(raised.value), base + 1, pid)
    assert "rank 1" in str(raised.value)


def test_a_rank_refuses_a_taken_port_instead_of_waiting_forever(foreign_listener: tuple[int, int]) -> None:
    """In the rank itself (a listener in its own process would otherwise wait forever for its socket)."""
    base, pid = foreign_listener
    code = ("from labs.core.debug.listener import listen_for_debugger\n"
            "from labs.core.errors import run_main\n"
            "raise SystemExit(run_main(lambda: listen_for_debugger(1, who='rank 1')))")
    env = {**os.environ, "WORKBOOK_DEBUG_BASE_PORT": str(base), "WORKBOOK_DEBUG_WAIT": "0"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert_names_the_holder(out.stderr, base + 1, pid)


@pytest.mark.engine
def test_vllm_workers_launch_names_the_holder_in_one_sentence(foreign_listener: tuple[int, int],
                                                              log_dir: Path) -> None:
    """The path of the issue: step4 --vllm-only under WORKBOOK_DEBUG_VLLM_WORKERS=1 with a taken port."""
    base, pid = foreign_listener
    log = log_dir / "workers.log"
    proc = launch_step4(["--vllm-only"], "WORKBOOK_DEBUG_VLLM_WORKERS", base, log)
    try:
        code = proc.wait(timeout=300)
    finally:
        kill_tree(proc)
    text = log.read_text(errors="replace")
    assert code == 2, tail(log)
    assert "Traceback" not in text and "Address already in use" not in text, tail(log)
    (error,) = [line for line in text.splitlines() if line.startswith("error: ")]
    assert_names_the_holder(error, base + 1, pid)
    assert re.search(r"vLLM worker rank 1\b", error), error
