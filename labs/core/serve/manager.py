"""Start, stop and inspect the workbook's vLLM server: the moving parts behind `python -m labs.core.serve`.

Two ways to start, one bookkeeping:
- foreground (`start_foreground`): vLLM runs under `script`, which gives it a pseudo-terminal,
  so its loading bars render live in your terminal and are written to the log as well;
- background (`start_background`): in a tmux session (`tmux attach -t vllm` to watch) whose
  output is copied to the log by `tee`; without tmux, as a detached process group.
Either way the server's pid and process group go to `logs/vllm.pid`, a second start is refused
while it lives, a pid file whose process is gone (crash, `kill -9`) is cleaned up, and whether
the server is *up* is only ever decided by asking it over HTTP (`labs.core.serve.health`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from labs.core.net import port_is_free
from labs.core.serve import health
from labs.core.serve.config import (
    DEFAULT_ENV_FILE, DEFAULT_LOG_DIR, LOOPBACK_HOSTS, SERVER_MODULE, ServerConfig, build_config, default_url,
    env_setting, server_root_url, url_for, url_port,
)
from labs.core.serve.launch import (
    NUM_LOG_LINES_ON_FAILURE, ServeError, kill_tmux_session, launch_detached, launch_in_terminal, launch_in_tmux,
    log_tail, new_log_path, tmux_path,
)
from labs.core.serve.records import (
    ServerRecord, describe_processes, end_process_group, end_processes, find_server_process, group_members,
    looks_like_vllm, pid_file, process_alive, process_create_time, read_record, remove_record, write_record,
)

Echo = Callable[[str], None]


@dataclass(frozen=True)
class ServerStatus:
    """The answer to "is the server up?", from `GET /v1/models` plus the pid file.

    Attributes:
        url: the server's root URL (clients use `url + "/v1"`).
        models: what `/v1/models` listed; empty when the server did not answer.
        error: why it did not answer (None when up).
        record: the pid file's server, when it is the one at `url`.
        record_alive: that server's process is running (it may still be loading when not up).
        notes: what was noticed and done on the way (e.g. a stale pid file removed).
    """

    url: str
    models: tuple[health.ServedModel, ...] = ()
    error: str | None = None
    record: ServerRecord | None = None
    record_alive: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def up(self) -> bool:
        return bool(self.models)

    @property
    def served_model_names(self) -> list[str]:
        return [m.id for m in self.models]

    @property
    def max_model_len(self) -> int | None:
        return self.models[0].max_model_len if self.models else None

    @property
    def pid(self) -> int | None:
        return self.record.pid if self.record and self.record_alive else None

    def describe(self, log_dir: Path = DEFAULT_LOG_DIR) -> str:
        """The up/down report `check` and `status` print."""
        state = "UP" if self.up else ("STARTING" if self.record_alive else "DOWN")
        lines = [*self.notes, f"vLLM server at {self.url}/v1: {state}" + (f" ({self.error})" if self.error else "")]
        for model in self.models:
            lines.append(f"  served model:   {model.id}  (max_model_len {model.max_model_len}, loaded from {model.root})")
        if self.record and self.record_alive:
            lines.append(f"  pid:            {self.record.pid} (process group {self.record.pgid}, {self.record.launcher})")
            if self.record.tmux_session:
                lines.append(f"  tmux session:   {self.record.tmux_session}  (watch: tmux attach -t {self.record.tmux_session})")
            lines.append(f"  log:            {self.record.log_path}  (follow: make vllm-logs)")
        elif not self.up:
            lines.append(f"  No server recorded in {pid_file(log_dir)}. Start one: make vllm-start-bg"
                         "  (or: python -m labs.core.serve start-bg)")
        if self.up and not self.record:
            lines.append(f"  (not recorded in {pid_file(log_dir)}: started elsewhere, so no pid or log to show)")
        return "\n".join(lines)


def _clean_stale_record(record: ServerRecord, log_dir: Path) -> str:
    """Remove a pid file whose server is gone; end leftovers (an orphaned engine core, its tmux)."""
    leftovers = [p for p in group_members(record.pgid) if looks_like_vllm(p)]
    end_processes(leftovers)
    kill_tmux_session(record.tmux_session, record.pgid)
    remove_record(log_dir, record.pid)
    note = (f"note: removed a stale pid file ({pid_file(log_dir)}): the server it names ({record.describe()}) "
            "is gone (stopped by a signal such as kill -9, or crashed)")
    if leftovers:
        note += f"; ended {len(leftovers)} leftover process(es) of it"
    return note + f". Its log: {record.log_path}"


def _busy_port_message(host: str, port: int, api_key: str | None) -> str:
    owner = health.port_owner(port)
    models, _ = health.probe(url_for(host, port), api_key, timeout_s=2.0)
    what = (f"a vLLM/OpenAI server serving {', '.join(m.id for m in models)} that labs.core.serve did not start"
            if models else "another program")
    return (f"Port {port} on {host} is already in use by {what}{f' ({owner})' if owner else ''}, so vLLM "
            f"could not listen there; nothing was started.\nPick another port: make vllm-start-bg PORT={port + 1}"
            f"  (or --port {port + 1}); to see what holds it: ss -ltnp 'sport = :{port}'")


def preflight(config: ServerConfig, echo: Echo = print) -> None:
    """Refuse a start that cannot work before anything is launched; clean a stale pid file.

    Raises:
        ServeError: a server we started is alive (named in the message), or the port is taken.
    """
    record = read_record(config.log_dir)
    if record is not None:
        if process_alive(record.pid, record.create_time):
            same = record.port == config.port
            raise ServeError(
                f"A vLLM server is already running {'on port ' + str(config.port) if same else 'from this log folder'}: "
                f"{record.describe()}.\nUse it (python -m labs.core.serve check), or stop it first: "
                f"{stop_command(config.log_dir)}"
                + ("" if same else "  (one server per log folder; --log-dir DIR starts a second one)"))
        echo(_clean_stale_record(record, config.log_dir))
    if not port_is_free(config.host, config.port):
        raise ServeError(_busy_port_message(config.host, config.port, config.api_key))
    if config.host not in LOOPBACK_HOSTS:
        echo(f"warning: binding {config.host}: other machines can reach this server"
             + ("" if config.api_key else "; set VLLM_API_KEY (environment or .env) so they need a key"))


def _record_for(config: ServerConfig, pid: int, pgid: int, log_path: Path, launcher: str,
                tmux_session: str | None) -> ServerRecord:
    return ServerRecord(pid=pid, pgid=pgid, create_time=process_create_time(pid) or 0.0, host=config.host,
                        port=config.port, model=config.model_path, served_model_name=config.served_model_name,
                        log_path=str(log_path), launcher=launcher, tmux_session=tmux_session,
                        started_at=datetime.now().isoformat(timespec="seconds"), command=config.display_command())


def _fail_start(config: ServerConfig, record: ServerRecord | None, log_path: Path,
                why: health.ServerNotReadyError) -> ServeError:
    """Stop what was started, forget it, and build the error with the log's last lines."""
    if record is not None:
        end_process_group(record.pgid, record.pid, grace_s=10.0)
        kill_tmux_session(record.tmux_session, record.pgid)
        remove_record(config.log_dir, record.pid)
    hint = ("\nIf it only needed longer (a big model, a busy machine), retry with --timeout 1200."
            if isinstance(why, health.ServerTimeoutError) else "")
    return ServeError(f"vLLM did not start: {why}\nIt was stopped. Last {NUM_LOG_LINES_ON_FAILURE} lines of "
                      f"{log_path}:\n{log_tail(log_path, secret=config.api_key)}{hint}")


def _ready_message(config: ServerConfig, record: ServerRecord, models: list[health.ServedModel]) -> str:
    served = ", ".join(f"'{m.id}' (max_model_len {m.max_model_len})" for m in models)
    where = (f"tmux session '{record.tmux_session}' (watch: tmux attach -t {record.tmux_session}, detach: Ctrl-b d)"
             if record.tmux_session else f"process group {record.pgid}")
    return (f"vLLM is up: {config.url}/v1 serves {served}; pid {record.pid} in {where}.\n"
            f"  log: {record.log_path}  ({logs_command(config.log_dir)})   stop: {stop_command(config.log_dir)}")


def start_background(config: ServerConfig | None = None, *, timeout_s: float = 600.0, use_tmux: bool | None = None,
                     echo: Echo = print) -> ServerStatus:
    """Start a vLLM server that outlives this process, and wait until it answers.

    Args:
        config: what to run; default `build_config()` (the workbook's model, port 8000).
        timeout_s: how long to wait for `/v1/models`; on failure the server is stopped.
        use_tmux: None: tmux if installed, else a detached process group; False: never tmux.
        echo: where progress messages go (`print`; a notebook may collect them).

    Returns:
        The status of the running server (`.up` is True).

    Raises:
        ServeError: refused (already running, port busy) or failed (with the log's last lines).
    """
    config = config or build_config()
    preflight(config, echo)
    if use_tmux is None:
        use_tmux = tmux_path() is not None
        if not use_tmux:
            echo("note: tmux is not installed (sudo apt-get install tmux; macOS: brew install tmux), so the server "
                 "runs as a detached process group; follow its log with make vllm-logs.")
    log_path = new_log_path(config.log_dir, config.port)
    echo("\n".join(config.reasons))
    echo(f"Starting: {config.display_command()}\n  log: {log_path}")
    pgid = launch_in_tmux(config, log_path) if use_tmux else launch_detached(config, log_path)
    server = find_server_process(pgid, SERVER_MODULE)
    record = None
    if server is not None:
        record = _record_for(config, server.pid, pgid, log_path, "tmux" if use_tmux else "process",
                             config.session_name if use_tmux else None)
        write_record(config.log_dir, record)
    try:
        if record is None:
            raise health.ServerNotReadyError("the server process did not start.")
        models = health.wait_until_healthy(config.url, timeout_s=timeout_s, api_key=config.api_key,
                                           is_alive=lambda: process_alive(record.pid, record.create_time))
    except health.ServerNotReadyError as exc:
        if record is None:  # no server found under what was launched: end what may still run of it
            end_process_group(pgid, pgid, grace_s=10.0)
            kill_tmux_session(config.session_name if use_tmux else None, pgid)
        raise _fail_start(config, record, log_path, exc) from None
    echo(_ready_message(config, record, models))
    return ServerStatus(config.url, tuple(models), None, record, True)


def start_foreground(config: ServerConfig | None = None, *, timeout_s: float = 600.0, echo: Echo = print) -> int:
    """Run a vLLM server in this terminal until it exits (Ctrl-C stops it); return its exit status.

    Args:
        config: what to run; default `build_config()`.
        timeout_s: how long to wait for `/v1/models`; on failure the server is stopped.
        echo: where our messages go (vLLM's own output goes straight to the terminal).
    """
    config = config or build_config()
    preflight(config, echo)
    log_path = new_log_path(config.log_dir, config.port)
    echo("\n".join(config.reasons))
    echo(f"Starting: {config.display_command()}\n  log: {log_path}\n  stop: Ctrl-C (or {stop_command(config.log_dir)} "
         "elsewhere)")
    proc, note = launch_in_terminal(config, log_path)
    if note:
        echo(note)
    record = None
    try:
        server = find_server_process(proc.pid, SERVER_MODULE)
        if server is None:
            proc.wait()
            echo(f"vLLM did not start. Last lines of {log_path}:\n{log_tail(log_path, secret=config.api_key)}")
            return proc.returncode or 1
        record = _record_for(config, server.pid, os.getpgid(server.pid), log_path, "foreground", None)
        write_record(config.log_dir, record)
        try:
            models = health.wait_until_healthy(config.url, timeout_s=timeout_s, api_key=config.api_key,
                                               is_alive=lambda: proc.poll() is None)
        except health.ServerNotReadyError as exc:
            echo(str(_fail_start(config, record, log_path, exc)))
            proc.wait()
            return 1
        echo(_ready_message(config, record, models))
        return proc.wait()
    except KeyboardInterrupt:  # only without a raw terminal: under `script`, Ctrl-C reaches vLLM itself
        echo("Ctrl-C: stopping the server...")
        if record is not None:
            end_process_group(record.pgid, record.pid)
        proc.wait()
        return 130
    finally:
        if record is not None:
            remove_record(config.log_dir, record.pid)


def stop_command(log_dir: Path) -> str:
    """The command that stops the server of `log_dir`: `make vllm-stop` only for the default folder."""
    if Path(log_dir).resolve() == DEFAULT_LOG_DIR.resolve():
        return "make vllm-stop"
    return f"python -m labs.core.serve stop --log-dir {log_dir}"


def logs_command(log_dir: Path) -> str:
    if Path(log_dir).resolve() == DEFAULT_LOG_DIR.resolve():
        return "make vllm-logs"
    return f"python -m labs.core.serve logs --follow --log-dir {log_dir}"


def restart(config: ServerConfig, *, grace_s: float = 20.0, timeout_s: float = 600.0, use_tmux: bool | None = None,
            echo: Echo = print) -> ServerStatus:
    """Stop the server recorded in `config.log_dir` if it runs, then start `config` in the background.

    Why one command: after a crash the pid file is stale and `start-bg` alone would refuse or
    confuse; `stop` says what it found (a running server stopped, a dead one's stale record
    cleaned, or nothing), so the restart's output tells the truth about the old server too.

    Args:
        config: the server to start (same log folder as the one to stop).
        grace_s: seconds between SIGTERM and SIGKILL for the old one (a hung server ignores SIGTERM).
        timeout_s / use_tmux: as for `start_background`.
        echo: where messages go.
    """
    stop(log_dir=config.log_dir, grace_s=grace_s, echo=echo)
    return start_background(config, timeout_s=timeout_s, use_tmux=use_tmux, echo=echo)


def stop(*, log_dir: Path = DEFAULT_LOG_DIR, port: int | None = None, grace_s: float = 20.0,
         echo: Echo = print) -> bool:
    """Stop the recorded server: SIGTERM its process group, SIGKILL after `grace_s`, end its tmux session.

    Args:
        log_dir: where its pid file is.
        port: if given, refuse unless the recorded server uses this port (a typo must not stop another).
        grace_s: seconds between SIGTERM and SIGKILL.
        echo: where messages go.

    Returns:
        True if a running server was stopped; False if there was none (stopping is idempotent).
    """
    record = read_record(log_dir)
    if record is None:
        echo(f"No server recorded in {pid_file(log_dir)}: nothing to stop.")
        return False
    if port is not None and record.port != port:
        raise ServeError(f"The recorded server runs on port {record.port}, not {port}: {record.describe()}. "
                         "Run stop without --port/PORT to stop it.")
    if not process_alive(record.pid, record.create_time):
        echo(_clean_stale_record(record, log_dir))
        return False
    echo(f"Stopping vLLM: {record.describe()}")
    for note in end_process_group(record.pgid, record.pid, grace_s):
        echo(f"note: {note}")
    kill_tmux_session(record.tmux_session, record.pgid)
    remove_record(log_dir, record.pid)
    echo(f"Stopped (process group {record.pgid} ended, pid file removed).")
    return True


def status(url: str | None = None, *, log_dir: Path = DEFAULT_LOG_DIR, env_file: Path = DEFAULT_ENV_FILE,
           api_key: str | None = None) -> ServerStatus:
    """Ask the server whether it is up; say which recorded process it is (a stale record is cleaned).

    Args:
        url: the server's URL (root or `/v1`); default: the recorded server's, else `VLLM_BASE_URL`,
            else http://127.0.0.1:8000.
        log_dir: where the pid file is.
        env_file: where `VLLM_API_KEY` / `VLLM_BASE_URL` may be set.
        api_key: default `VLLM_API_KEY`.

    Returns:
        The status; `.up` is the answer.
    """
    notes: list[str] = []
    record = read_record(log_dir)
    if url is None:  # a stale record still says where the user expects a server
        url = url_for(record.host, record.port) if record else default_url(env_file)
    url = server_root_url(url)
    alive = record is not None and process_alive(record.pid, record.create_time)
    if record is not None and not alive:
        notes.append(_clean_stale_record(record, log_dir))
        record = None
    if record is not None and record.port != url_port(url):
        record, alive = None, False  # the recorded server is another one
    models, error = health.probe(url, api_key or env_setting("VLLM_API_KEY", env_file))
    return ServerStatus(url, tuple(models), error, record, alive, tuple(notes))


def process_lines(record: ServerRecord) -> list[str]:
    """The live processes of the recorded server's group (API server, engine core, worker, tee)."""
    return describe_processes(group_members(record.pgid))
