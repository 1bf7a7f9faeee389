"""What the server manager runs: the vLLM server's command line, its environment, and their sources.

Every setting comes from, first match wins: an explicit argument (a command-line option), the
environment, a `.env` file in the repository root (git-ignored), then the workbook's defaults.
Engine flags are never written here: they are derived from `labs.core.engine.plan_run(...).settings`,
the same decision `make_llm` makes for the labs, so a CPU-only flag cannot reach a GPU server.

The API key is the one secret: it reaches vLLM through the `VLLM_API_KEY` environment variable,
not `--api-key`, because vLLM logs its non-default command-line arguments at start-up (and a
command line is visible to `ps`); every command line this module shows has it masked.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from labs.core.paths import REPO_ROOT
from labs.core.vllm_internals import SERVER_MODULE  # the module `python -m` runs; re-exported for the manager

DEFAULT_ENV_FILE = REPO_ROOT / ".env"
DEFAULT_LOG_DIR = REPO_ROOT / "logs"  # git-ignored
DEFAULT_HOST = "127.0.0.1"  # only this machine can connect; --host 0.0.0.0 opens it to the network
DEFAULT_PORT = 8000  # vLLM's own default
DEFAULT_SESSION_NAME = "vllm"  # tmux session: `tmux attach -t vllm`
API_KEY_ENV = "VLLM_API_KEY"
MASK = "****"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
TRUTHY = frozenset({"1", "true", "yes", "on"})


def read_env_file(path: Path = DEFAULT_ENV_FILE) -> dict[str, str]:
    """Parse a `.env` file: `KEY=VALUE` lines, `#` comments, optional `export ` and quotes.

    Why our own parser: the format is tiny, and the server manager must not need python-dotenv.

    Args:
        path: the file; a missing file is the same as an empty one.

    Returns:
        KEY -> VALUE, in file order.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        else:  # an unquoted value may carry a trailing comment
            value = value.split(" #", 1)[0].strip()
        values[key.strip()] = value
    return values


def env_setting(name: str, env_file: Path = DEFAULT_ENV_FILE) -> str | None:
    """`name` from the environment, else from `env_file`, else None (empty counts as unset)."""
    return os.environ.get(name) or read_env_file(env_file).get(name) or None


def server_root_url(url: str) -> str:
    """'http://h:p/v1/' or 'h:p' -> 'http://h:p': the server's root, under which /v1 lives.

    Why: OpenAI clients are given the `/v1` URL (VLLM_BASE_URL is usually written that way),
    while health checks and the CLI talk about the server; accept both spellings.
    """
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url.rstrip("/"))
    path = parts.path.removesuffix("/v1")
    return f"{parts.scheme}://{parts.netloc}{path}"


def url_for(host: str, port: int) -> str:
    """The root URL a client on this machine uses for a server bound to `host`:`port`."""
    connect_host = DEFAULT_HOST if host in ("0.0.0.0", "::", "") else host  # 0.0.0.0 binds all, incl. loopback
    if ":" in connect_host:  # an IPv6 literal
        connect_host = f"[{connect_host}]"
    return f"http://{connect_host}:{port}"


def url_port(url: str) -> int:
    """The port of a server URL (80/443 when the URL names none)."""
    parts = urlsplit(server_root_url(url))
    return parts.port or (443 if parts.scheme == "https" else 80)


def default_url(env_file: Path = DEFAULT_ENV_FILE) -> str:
    """`VLLM_BASE_URL` (environment or .env) as a root URL, else the workbook's default server."""
    configured = env_setting("VLLM_BASE_URL", env_file)
    return server_root_url(configured) if configured else url_for(DEFAULT_HOST, DEFAULT_PORT)


def engine_flags(engine_kwargs: dict[str, object]) -> list[str]:
    """`EngineArgs` keyword arguments -> the server's command-line flags.

    Why a generic translation: the settings come from `labs.core.hardware` (the same ones `make_llm`
    passes to `LLM(...)`), so the server and the labs run the engine identically, and a GPU
    machine gets exactly what `engine_settings` chose for it, never a CPU-only flag.

    Example: {"block_size": 32, "enforce_eager": True} -> ["--block-size", "32", "--enforce-eager"].
    """
    flags: list[str] = []
    for key, value in engine_kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + flag[2:])
        elif value is not None:
            flags += [flag, str(value)]
    return flags


@dataclass(frozen=True)
class ServerConfig:
    """Everything needed to start one vLLM server, decided before anything starts.

    Attributes:
        model_path: the folder (or hub id) given to `--model`.
        served_model_name: the name clients must put in `model=` (`--served-model-name`).
        host: the address to bind; 127.0.0.1 unless asked otherwise.
        port: the TCP port to bind.
        max_model_len: longest prompt + output per request.
        engine_args: flags derived from `plan_run(...).settings` (hardware-specific).
        engine_env: environment vLLM reads at start, from the same settings (e.g. VLLM_CPU_KVCACHE_SPACE).
        log_dir: where logs and the pid file (`vllm.pid`) go.
        session_name: the tmux session for background mode.
        api_key: required from clients when set; never shown (masked everywhere).
        debug: DEBUG logs from vLLM and transformers, plus request logging.
        log_requests: log every request (`--enable-log-requests`).
        extra_args: passed to vLLM unchanged, last (they win over ours).
        reasons: why the model and the engine settings were chosen, one sentence each.
        unset_env: variables of ours the server must not inherit (a notebook kernel's quieting
            of its own in-process engine, say); `debug` still sets its logging level.
    """

    model_path: str
    served_model_name: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_model_len: int = 2048
    engine_args: tuple[str, ...] = ()
    engine_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path = DEFAULT_LOG_DIR
    session_name: str = DEFAULT_SESSION_NAME
    api_key: str | None = field(default=None, repr=False)
    debug: bool = False
    log_requests: bool = False
    extra_args: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    unset_env: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return url_for(self.host, self.port)

    def command(self) -> list[str]:
        """The server's argv (no secrets in it)."""
        argv = [sys.executable, "-m", SERVER_MODULE, "--model", self.model_path,
                "--served-model-name", self.served_model_name, "--host", self.host, "--port", str(self.port),
                "--max-model-len", str(self.max_model_len), *self.engine_args]
        if self.log_requests or self.debug:
            argv.append("--enable-log-requests")
        if self.debug:
            argv += ["--uvicorn-log-level", "debug"]
        return argv + list(self.extra_args)

    def env_overrides(self) -> dict[str, str]:
        """What the server's environment adds to ours, without the API key."""
        # Unbuffered: the log shows each line when it happens. engine_env already leaves out
        # what the user exported (labs.core.hardware checks), so theirs reaches vLLM unchanged.
        env = {"PYTHONUNBUFFERED": "1", **self.engine_env}
        if self.debug:
            env |= {"VLLM_LOGGING_LEVEL": "DEBUG", "TRANSFORMERS_VERBOSITY": "debug"}
        return env

    def child_env(self) -> dict[str, str]:
        """The server's whole environment: ours, the overrides, and the API key if there is one."""
        env = {key: value for key, value in os.environ.items() if key not in self.unset_env}
        # A notebook or test that made an in-process engine (make_llm) exported
        # VLLM_ENABLE_V1_MULTIPROCESSING=0 for its own reasons; the server's process layout is decided
        # by its executor (engine_env, from engine_settings.server_executor), never inherited by accident.
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        env |= self.env_overrides()
        if self.api_key:
            env[API_KEY_ENV] = self.api_key
        return env

    def display_command(self) -> str:
        """The command as a shell line, for people: what is set in the environment, key masked."""
        shown = [f"{key}={shlex.quote(value)}" for key, value in self.env_overrides().items()]
        if self.api_key:
            shown.append(f"{API_KEY_ENV}={MASK}")
        return " ".join([*shown, shlex.join(self.command())])


def default_served_model_name(name: str, path: str, source: str) -> str:
    """A folder given by path is served by its folder name; a hub id or name as it was asked for."""
    return Path(path).name if source == "explicit path" else name


def build_config(model: str | None = None, *, served_model_name: str | None = None, host: str | None = None,
                 port: int | None = None, max_model_len: int | None = None, log_dir: Path | None = None,
                 session_name: str | None = None, env_file: Path = DEFAULT_ENV_FILE, debug: bool | None = None,
                 log_requests: bool = False, extra_args: tuple[str, ...] = (),
                 unset_env: tuple[str, ...] = (), executor: str | None = None) -> ServerConfig:
    """Decide what to run: resolve the model, plan the engine for this hardware, read the settings.

    Args:
        model: a path, hub id or name; default: `VLLM_MODEL` (environment or .env), else the
            default chosen by `labs.core.models.resolve_model`.
        served_model_name: default: the model's name (a folder path: the folder's name).
        host: default 127.0.0.1.
        port: default: the port of `VLLM_BASE_URL` if set, else 8000.
        max_model_len: default: the labs' `DEFAULT_MAX_MODEL_LEN`.
        log_dir: default: the repository's `logs/`.
        session_name: tmux session name; default "vllm".
        env_file: the `.env` file to read (`VLLM_API_KEY`, `VLLM_BASE_URL`, `VLLM_MODEL`).
        debug: default: `DEBUG=1` in the environment.
        log_requests: log each request in the server log.
        extra_args: more vLLM flags, passed last.
        unset_env: variables of this process the server must not inherit.
        executor: "uni" (the model runs in the engine core process), "mp" (in a worker process of
            its own), or None: decided by `labs.core.engine_settings.server_executor` ("uni" on a
            CPU with TP=1, vLLM's own choice on a GPU).

    Returns:
        The config; nothing has started.
    """
    from labs.core.engine import DEFAULT_MAX_MODEL_LEN, plan_run  # imports torch: only when starting
    from labs.core.engine_settings import server_executor

    run = plan_run(model or env_setting("VLLM_MODEL", env_file))
    layout = server_executor(run.hardware, int(run.settings.engine_kwargs.get("tensor_parallel_size", 1)), executor)
    if port is None:
        port = url_port(default_url(env_file))
    if debug is None:
        debug = (os.environ.get("DEBUG") or "").lower() in TRUTHY
    return ServerConfig(
        model_path=run.model.path,
        served_model_name=served_model_name
        or default_served_model_name(run.model.name, run.model.path, run.model.source),
        host=host or DEFAULT_HOST,
        port=port,
        max_model_len=max_model_len or DEFAULT_MAX_MODEL_LEN,
        engine_args=tuple(engine_flags(run.settings.engine_kwargs | layout.engine_kwargs)),
        engine_env=run.settings.env | layout.env,
        log_dir=log_dir or DEFAULT_LOG_DIR,
        session_name=session_name or DEFAULT_SESSION_NAME,
        api_key=env_setting(API_KEY_ENV, env_file),
        debug=debug,
        log_requests=log_requests,
        extra_args=tuple(extra_args),
        unset_env=tuple(unset_env),
        reasons=(f"Model: {run.model.path} ({run.model.reason})", f"Hardware: {run.hardware.describe()}",
                 *run.settings.reasons, *layout.reasons),
    )


def mask_secret(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced by ****."""
    return text.replace(secret, MASK) if secret else text
