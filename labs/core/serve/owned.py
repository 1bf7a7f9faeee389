"""A server owned by the process that asked for it (a notebook, a test session): reused on rerun, never left behind.

`owned_server` is the one way a notebook or a test starts a vLLM server for its own use (the
notebooks directly or through `labs.capstone_translation.notebook.lab_server`; the tests through the
`vllm_server` fixture in tests/conftest.py; a lab's own servers, such as Lab 10's fault server, whose
extra environment is simply the caller's: `environ_set` around the call). Only tests of the other
start paths (`start-bg`, `start`, the process launcher, start order) call `start_background` or the
CLI themselves, and `labs.core.bench.server_modes`, a measuring tool that starts one server per
engine layout with that layout's engine environment and stops them in its own `finally`.

The rule: a server a notebook starts must not outlive the notebook, however it ends (a failed
cell, an interrupt, a restarted or killed kernel), and a rerun must not start a second one
(tests/test_serve_owned.py checks both on real servers). `owned_server` ties the server's life to
its owners:

- the first call starts it (its own free port and tmux session, the notebook's log folder) and
  records this process as its owner; a *watchdog* process (`labs.core.serve.watchdog`) stops the
  server's whole process group and tmux session once no owner is alive, even after SIGKILL;
- a clean exit (a kernel shut down, a script that ends) stops it at once, through `atexit`;
- a later call with the same log folder while it is up (the same notebook run again, in the same
  kernel or a new one) reuses it and becomes one more owner, instead of starting a second server;
- `OwnedServer.stop()` (a notebook's last cell) releases it; the last owner's release stops it.

Example (a notebook: the server lives until `.stop()` or the kernel's end):
    server = serve.owned_server("vllm-lab6", log_dir=Path("runs/profiles/server-logs"))
    ...  # server.url, server.pid
    server.stop()

Example (a script or a test: stopped when the block ends, however it ends):
    with serve.owned_server("vllm-test", log_dir=tmp / "logs", env_file=tmp / ".env") as server:
        ...  # server.url, server.api_key (from env_file or VLLM_API_KEY), server.pid
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labs.core.serve import health, owners
from labs.core.serve.config import API_KEY_ENV, DEFAULT_ENV_FILE, REPO_ROOT, build_config, env_setting, url_for, \
    url_port
from labs.core.serve.launch import ServeError
from labs.core.serve.manager import start_background
from labs.core.serve.records import ServerRecord, process_alive, read_record

Echo = Callable[[str], None]
# A notebook quiets vLLM in its own kernel (os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING"));
# the server writes to its own log, where vLLM's INFO lines are the record of what it did.
KERNEL_ONLY_ENV = ("VLLM_LOGGING_LEVEL",)
WATCHDOG_LOG_NAME = "watchdog.log"
# Kept so Python does not warn they outlive their Popen; exited ones are reaped and dropped at each spawn.
_watchdogs: list[subprocess.Popen[bytes]] = []
_released_at_exit: set[Path] = set()


@dataclass
class OwnedServer:
    """A running server, and whether this process owns it.

    Attributes:
        url: its root URL (clients use `url + "/v1"`).
        log_dir: its log folder (pid file, owners file), when it is a workbook server.
        pid: its API server's pid, when known (for py-spy and the like).
        owned: this process is one of its owners: `stop()` releases it.
        reused: it was running before this call (an earlier run's server).
        api_key: the key its clients send (`VLLM_API_KEY` from the environment or the env file
            it was started with), None for none; never shown (not in repr).
    """

    url: str
    log_dir: Path | None = None
    pid: int | None = None
    owned: bool = False
    reused: bool = False
    api_key: str | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return url_port(self.url)

    def stop(self, echo: Echo = print) -> bool:
        """Release this process's ownership; the last owner's release stops the server.

        Returns:
            True if the server was stopped now.
        """
        if not self.owned or self.log_dir is None:
            return False
        self.owned = False
        return release(self.log_dir, owners.Proc.current(), echo)

    def __enter__(self) -> OwnedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def release(log_dir: Path, owner: owners.Proc, echo: Echo = print) -> bool:
    """Remove `owner` from the server's owners; stop the server if no live owner remains.

    Args:
        log_dir: the server's log folder.
        owner: the process letting go.
        echo: where messages go.

    Returns:
        True if the server was stopped now.
    """
    with owners.locked(log_dir):
        state = owners.read(log_dir)
        if state is None or not state.has(owner):
            return False
        state.owners = [o for o in state.live_owners() if not o.same(owner)]
        if state.owners:
            owners.write(log_dir, state)
            echo(f"The server on port {state.port} stays up: still used by pid "
                 f"{', '.join(str(o.pid) for o in state.owners)}.")
            return False
        owners.end_server(log_dir, state, echo)
        owners.remove(log_dir)
        return True


def _release_at_exit(log_dir: Path) -> None:
    """Once per folder and process: a clean exit stops the server without waiting for the watchdog."""
    if log_dir in _released_at_exit:
        return
    _released_at_exit.add(log_dir)
    me = owners.Proc.current()

    def release_if_owner() -> None:
        if os.getpid() == me.pid:  # a forked child inherits atexit handlers, not our ownership
            release(log_dir, me)

    atexit.register(release_if_owner)


def _spawn_watchdog(log_dir: Path) -> owners.Proc:
    """Start the watchdog in a session of its own (a signal to our process group must not end it)."""
    _watchdogs[:] = [proc for proc in _watchdogs if proc.poll() is None]  # poll() reaps an exited one
    with open(log_dir / WATCHDOG_LOG_NAME, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "labs.core.serve.watchdog", str(log_dir)], cwd=REPO_ROOT,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    _watchdogs.append(proc)
    return owners.Proc.of(proc.pid)


def _join(log_dir: Path, me: owners.Proc) -> tuple[ServerRecord, bool] | None:
    """Under the lock: become an owner of the folder's running server, if there is one.

    Returns:
        (its record, whether it is owned: False for a server someone started without owners,
        e.g. `python -m labs.core.serve start-bg --log-dir ...`, which is used but never stopped), or
        None when no server runs there.
    """
    record = read_record(log_dir)
    if record is None or not process_alive(record.pid, record.create_time):
        return None
    state = owners.read(log_dir)
    server = owners.Proc(record.pid, record.create_time)
    if state is None or (state.server is not None and not state.server.same(server)):
        owners.remove(log_dir)  # an owners file about another server is stale
        return record, False
    state.server = server  # an owner that died mid-start may not have written it
    if not state.has(me):
        state.owners.append(me)
    if state.watchdog is None or not state.watchdog.alive():
        state.watchdog = _spawn_watchdog(log_dir)
    owners.write(log_dir, state)
    _release_at_exit(log_dir)
    return record, True


def _start(name: str, log_dir: Path, me: owners.Proc, model: str | None, debug: bool | None, env_file: Path,
           timeout_s: float, echo: Echo, extra_args: tuple[str, ...] = (), executor: str | None = None) -> OwnedServer:
    """Under the lock: start a server owned by `me`, its watchdog first (an owner may die mid-start)."""
    port = health.find_free_port()
    config = build_config(model, port=port, log_dir=log_dir, session_name=f"{name}-{port}", debug=debug,
                          env_file=env_file, unset_env=KERNEL_ONLY_ENV, extra_args=extra_args, executor=executor)
    state = owners.Ownership(config.session_name, port, [me])
    owners.write(log_dir, state)
    state.watchdog = _spawn_watchdog(log_dir)
    owners.write(log_dir, state)
    _release_at_exit(log_dir)
    try:
        started = start_background(config, timeout_s=timeout_s, echo=echo)
    except ServeError:  # refused (the port taken meanwhile: maybe by another's server) or failed and stopped
        owners.remove(log_dir)
        raise
    except BaseException:  # Ctrl-C in the wait: our server runs on
        owners.end_server(log_dir, state, echo)
        owners.remove(log_dir)
        raise
    state.server = owners.Proc(started.record.pid, started.record.create_time)
    owners.write(log_dir, state)
    echo("It stops when this process ends, or at .stop(); run again while it is up, it is reused.")
    return OwnedServer(config.url, log_dir, started.record.pid, owned=True, api_key=config.api_key)


def owned_server(name: str, *, log_dir: Path, model: str | None = None, debug: bool | None = None,
                 env_file: Path = DEFAULT_ENV_FILE, timeout_s: float = 600.0, echo: Echo = print,
                 extra_args: tuple[str, ...] = (), executor: str | None = None) -> OwnedServer:
    """The workbook's server for this process: the folder's running one, else a new one, owned.

    Use it as a context manager (`with owned_server(...) as server:`) to stop it when the block
    ends; a notebook keeps it across cells and calls `server.stop()` in its last cell.

    Args:
        name: the tmux session's prefix (the port is appended), e.g. "vllm-lab6".
        log_dir: the owner's own log folder (one server per folder), e.g. the notebook's run folder.
        model: default: `VLLM_MODEL`, else the workbook's default model.
        debug: DEBUG logs from vLLM (default: `DEBUG=1` in the environment).
        env_file: the `.env` file to read settings from (`VLLM_API_KEY`, `VLLM_MODEL`), after the
            environment; default: the repository's `.env`. The key reaches vLLM through its
            environment only, never its command line.
        timeout_s: how long to wait until it answers.
        echo: where progress messages go.
        extra_args: more vLLM flags for a server this call starts (Lab 9: `--enable-lora --lora-modules
            english=PATH ...`); a running server in `log_dir` is reused as it was started.
        executor: "uni" or "mp" for a server this call starts (Lab 10: "mp", its failures are a
            worker process's); None: the hardware decides (`engine_settings.server_executor`).

    Returns:
        The running server; `.owned` is False only for a server in `log_dir` that was started
        without owners (it is used, never stopped).

    Raises:
        ServeError: it could not start (the message holds the log's last lines) or stopped while
            it was being reused.
    """
    log_dir = Path(log_dir).resolve()
    me = owners.Proc.current()
    with owners.locked(log_dir):
        joined = _join(log_dir, me)
        if joined is None:
            return _start(name, log_dir, me, model, debug, env_file, timeout_s, echo, tuple(extra_args), executor)
    record, owned = joined
    url = url_for(record.host, record.port)
    api_key = env_setting(API_KEY_ENV, env_file)
    try:  # outside the lock: a server started by `start-bg --log-dir` may still be loading
        health.wait_until_healthy(url, timeout_s=timeout_s, api_key=api_key,
                                  is_alive=lambda: process_alive(record.pid, record.create_time))
    except health.ServerNotReadyError as exc:
        if owned:
            release(log_dir, me, echo)
        raise ServeError(f"The server recorded in {log_dir} stopped while it was being reused: {exc}") from None
    echo(f"Reusing the server already running for {log_dir} ({record.describe()})"
         + ("." if owned else "; it was not started by a notebook, so it is left running at the end."))
    return OwnedServer(url, log_dir, record.pid, owned=owned, reused=True, api_key=api_key)
