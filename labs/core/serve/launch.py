"""How the server process is launched (tmux, a detached process group, `script`), and its log files.

Each launcher returns the pid of the process it started first; the server itself
(`python -m vllm.entrypoints.openai.api_server`) is found at or under it with
`records.find_server_process`: `script` starts it through a shell, and a tmux pane becomes the
server only once `labs.core.serve.pane` has set its environment.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil

from labs.core.errors import WorkbookError
from labs.core.serve.config import REPO_ROOT, ServerConfig, mask_secret

NUM_LOG_LINES_ON_FAILURE = 40
LATEST_LOG_NAME = "latest.log"
PANE_SCRIPT = Path(__file__).with_name("pane.py")  # run by path: see labs/core/serve/pane.py for why


class ServeError(WorkbookError):
    """A start or stop that cannot go ahead; the message says why and what to do instead."""


def new_log_path(log_dir: Path, port: int) -> Path:
    """A timestamped log file, and `latest.log` pointing at it (what `make vllm-logs` follows)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"vllm-{datetime.now():%Y%m%d-%H%M%S}-port{port}.log"
    latest = log_dir / LATEST_LOG_NAME
    latest.unlink(missing_ok=True)
    try:
        latest.symlink_to(path.name)
    except OSError:  # a filesystem without symlinks: the pid file still names the real log
        pass
    return path


def log_tail(path: Path | str, num_lines: int = NUM_LOG_LINES_ON_FAILURE, secret: str | None = None) -> str:
    """The last lines of a log, progress-bar redraws (\\r) collapsed to their final state."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    lines = [line.split("\r")[-1] if line.rstrip("\r") else "" for line in text.splitlines()]
    return mask_secret("\n".join(lines[-num_lines:]), secret)


def tmux_path() -> str | None:
    return shutil.which("tmux")


def tmux_pane_pid(session: str) -> int | None:
    """The pid of the session's first pane, or None if there is no such session ('=': exact name)."""
    tmux = tmux_path()
    if tmux is None:
        return None
    result = subprocess.run([tmux, "display-message", "-p", "-t", f"={session}:", "#{pane_pid}"],
                            capture_output=True, text=True)
    return int(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip().isdigit() else None


def kill_tmux_session(session: str | None, pgid: int) -> None:
    """End our tmux session, checked by its pane pid so a same-named session of yours survives."""
    tmux = tmux_path()
    if session and tmux and tmux_pane_pid(session) == pgid:
        subprocess.run([tmux, "kill-session", "-t", f"={session}"], capture_output=True)


def _write_pane_spec(config: ServerConfig, log_path: Path) -> Path:
    """The server's argv, environment and log for `labs.core.serve.pane`, in a file only we can read.

    Why a file: the environment may hold the API key, and a command line is visible to `ps`.
    `mkstemp` creates it mode 0600; the pane deletes it as soon as it has read it, and
    `launch_in_tmux` makes sure it is gone before it returns or raises.
    """
    config.log_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".vllm-pane-", suffix=".json", dir=config.log_dir)
    spec = {"argv": config.command(), "env": config.child_env(), "log_path": str(log_path),
            "tee": shutil.which("tee") or "/usr/bin/tee"}
    with os.fdopen(fd, "w", encoding="utf-8") as spec_file:
        json.dump(spec, spec_file)
    return Path(name)


def launch_in_tmux(config: ServerConfig, log_path: Path) -> int:
    """Start the server in a detached tmux session; return the pane pid (= the server's pid and group).

    Why through `labs.core.serve.pane`: a tmux server gives new panes *its* environment (that of
    whoever started it, e.g. a notebook kernel), and `new-session -e` can add variables but not
    remove one; the pane script replaces that environment with exactly `config.child_env()`.
    """
    if tmux_pane_pid(config.session_name) is not None:
        raise ServeError(f"A tmux session named '{config.session_name}' already exists but no running server is "
                         f"recorded for it. Look at it: tmux attach -t {config.session_name}; or pick another "
                         "name: --name NAME")
    spec_path = _write_pane_spec(config, log_path)
    argv = [tmux_path() or "tmux", "new-session", "-d", "-s", config.session_name, "-c", str(REPO_ROOT),
            "-P", "-F", "#{pane_pid}", "--", sys.executable, "-I", "-S", str(PANE_SCRIPT), str(spec_path)]
    try:  # however this ends (tmux fails, the pane dies first, Ctrl-C), the API key is not left on disk
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise ServeError(f"tmux could not start the session: {mask_secret(result.stderr.strip(), config.api_key)}")
        pane_pid = int(result.stdout.strip())
        _wait_until_read(spec_path, pane_pid)
    finally:
        spec_path.unlink(missing_ok=True)
    return pane_pid


def _wait_until_read(spec_path: Path, pane_pid: int, timeout_s: float = 30.0) -> None:
    """Wait until the pane has read (and deleted) its spec file, or has died, or `timeout_s` passed.

    Why: a spec that is deleted before the pane reads it fails the start (the pane exits; the
    caller finds no server and says so), so the launcher waits as long as it looks for the server.
    """
    deadline = time.monotonic() + timeout_s
    while spec_path.exists() and time.monotonic() < deadline:
        try:
            if psutil.Process(pane_pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.Error:  # the pane has exited without reading it
            return
        time.sleep(0.05)


def launch_detached(config: ServerConfig, log_path: Path) -> int:
    """Start the server in a new session (its own process group), output to the log; return its pid."""
    with open(log_path, "ab") as log:  # the child keeps its own copy of the file descriptor
        proc = subprocess.Popen(config.command(), cwd=REPO_ROOT, env=config.child_env(), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc.pid


def launch_in_terminal(config: ServerConfig, log_path: Path) -> tuple[subprocess.Popen[bytes], str | None]:
    """Start the server attached to this terminal, its output also going to the log.

    Why `script`: vLLM's loading bars (tqdm) render live only on a terminal; `script -f` runs the
    server on a pseudo-terminal, shows everything here and flushes it to the log as it comes.
    Under `script` the terminal is raw, so Ctrl-C reaches vLLM itself, which shuts down cleanly.

    Returns:
        The launcher process, and a note for the user when `script` is missing.
    """
    env = {**config.child_env(), "SHELL": "/bin/sh"}  # script runs the command with $SHELL -c
    script = shutil.which("script")
    if script:
        argv = [script, "-q", "-f", "-e", "-c", "exec " + shlex.join(config.command()), str(log_path)]
        return subprocess.Popen(argv, cwd=REPO_ROOT, env=env), None
    pipeline = f"{shlex.join(config.command())} 2>&1 | tee -a {shlex.quote(str(log_path))}"
    proc = subprocess.Popen(["/bin/sh", "-c", pipeline], cwd=REPO_ROOT, env=env, start_new_session=True)
    return proc, ("note: `script` (util-linux: sudo apt-get install util-linux) not found: the output goes "
                  "through a plain pipe, so loading bars appear only when they finish.")
