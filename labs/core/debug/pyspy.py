"""`py-spy dump` of a running vLLM server, read and explained: every thread, what it waits on.

Why in the core: a hang is diagnosed from outside (Lab 6 shows a healthy server's threads, Lab 10 a
hung one's), and both read the same dump with the same thread roles. py-spy reads the interpreter's
memory through ptrace, so it works on a process that answers nothing any more.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

import pandas as pd

from labs.core.paths import VENV_BIN

ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # py-spy colours its output when it thinks it may


@dataclass(frozen=True)
class ThreadDump:
    """One thread in a `py-spy dump`; `frames` innermost first, as py-spy prints them."""

    pid: int
    process: str
    thread: str
    state: str  # "idle" (blocked in a wait) or "active" (running Python or native code)
    frames: list[str] = field(default_factory=list)


# What a thread is, from a function on its stack (vLLM 0.32.0 names); the first match wins.
THREAD_ROLES = (
    ("_process_input_queue", "engine core busy loop: blocked on its input queue until a request arrives"),
    ("process_input_sockets", "engine core input thread: ZMQ socket from the API server -> input queue"),
    ("process_output_sockets", "engine core output thread: output queue -> ZMQ socket to the API server"),
    # A worker inside a step, and the engine core waiting for it, also have the idle loop's frames
    # below: the step's own frames must win, or a stuck step reads as "waiting for work".
    ("WorkerProc._execute_worker_rpc", "model worker: running a step it was sent (not waiting for work)"),
    ("MultiprocExecutor.collective_rpc", "engine core: sent a step to its workers, waits for their answer"),
    ("worker_busy_loop", "model worker: waits on the shared-memory queue for the next step (spins, then sleeps)"),
    ("monitor_engine_liveness", "API server: watches that the engine core process is alive"),
    ("monitor_workers", "engine core: watches that its worker processes are alive"),
    ("death_pipe_monitor", "worker: exits if its parent dies"),
    ("SignalCallback._run", "engine core: runs the shutdown callback when a signal arrives"),
    ("Runner.run", "API server: the asyncio event loop (uvicorn), idle between HTTP requests"),
    ("tqdm/_monitor.py", "tqdm's progress-bar monitor"), ("resource_tracker", "multiprocessing's resource tracker"),
    ("concurrent/futures/thread.py", "an idle thread-pool worker"),
)


def explain_thread(thread: ThreadDump) -> str:
    """What this thread is for, from the functions on its stack (or "?")."""
    return next((role for needle, role in THREAD_ROLES if needle in "\n".join(thread.frames)), "?")


def parse_py_spy_dump(text: str) -> list[ThreadDump]:
    """Split `py-spy dump --subprocesses` output into threads."""
    threads: list[ThreadDump] = []
    pid, process = 0, ""
    for line in ANSI_COLOUR.sub("", text).splitlines():
        if m := re.match(r"Process (\d+): (.*)", line):
            pid, process = int(m.group(1)), m.group(2)
        elif m := re.match(r'Thread (\S+) \((\w+)\)(?:: "(.*)")?', line):
            threads.append(ThreadDump(pid, process, m.group(3) or m.group(1), m.group(2)))
        elif line.startswith("    ") and threads:
            threads[-1].frames.append(line.strip())
    return threads


@dataclass(frozen=True)
class PySpyResult:
    """A `py-spy dump` (its text and threads), or why there is none (`problem`: what to do about it)."""

    text: str
    threads: list[ThreadDump]
    problem: str | None = None


def py_spy_dump(pid: int, *, subprocesses: bool = True, timeout_s: float = 60) -> PySpyResult:
    """Every Python thread's stack in process `pid` (and its children), read from outside.

    Why py-spy for a hang: it reads the interpreter's memory through ptrace, so it works on a
    process that answers nothing any more, with no code in it prepared for debugging.
    """
    exe = VENV_BIN / "py-spy"
    cmd = [str(exe) if exe.exists() else "py-spy", "dump", "--pid", str(pid)] + ["--subprocesses"] * subprocesses
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        return PySpyResult("", [], "py-spy is not installed: pip install py-spy (in the `test` extra).")
    text = ANSI_COLOUR.sub("", done.stdout + done.stderr)
    if done.returncode != 0 and re.search(r"ermission|EPERM|ptrace|not permitted", text):
        return PySpyResult(text, [], "py-spy may not attach (ptrace refused). Run it as root (`sudo py-spy dump "
                           f"--pid {pid}`), start the container with `--cap-add SYS_PTRACE`, or allow ptrace of "
                           "your own processes: `sudo sysctl kernel.yama.ptrace_scope=0`.")
    if done.returncode != 0:
        return PySpyResult(text, [], f"py-spy failed (exit {done.returncode}): {text.strip()[-500:]}")
    return PySpyResult(text, parse_py_spy_dump(text))


def thread_table(threads: list[ThreadDump]) -> pd.DataFrame:
    """One row per thread: pid, process (module or name), thread, idle/active, innermost frame, role."""
    return pd.DataFrame([{"pid": t.pid, "process": t.process.split(" -m ")[-1].split(" ")[0][:40],
                          "thread": t.thread, "state": t.state, "innermost frame": t.frames[0] if t.frames else "",
                          "role": explain_thread(t)} for t in threads])
