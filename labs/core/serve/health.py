"""Is a vLLM server up? Asked over HTTP (`GET /v1/models`), never inferred from a pid.

Why HTTP: a live process may still be loading the model, may have bound another port, or may
be stuck; a server that answers `/v1/models` with the served model is one a client can use.
The answer also carries what a client needs: the served model names and `max_model_len`.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from labs.core.errors import WorkbookError
from labs.core.net import port_listener


class ServerNotReadyError(WorkbookError):
    """The server did not become healthy: its process exited (or never started)."""


class ServerTimeoutError(ServerNotReadyError):
    """The server did not become healthy in time (it may only be slow: a big model, a busy machine)."""


@dataclass(frozen=True)
class ServedModel:
    """One entry of `GET /v1/models`.

    Attributes:
        id: the name clients pass as `model=` (the server's `--served-model-name`).
        max_model_len: longest prompt + output the server accepts per request.
        root: what the server loaded (its `--model`).
    """

    id: str
    max_model_len: int | None
    root: str | None


def fetch_models(url: str, api_key: str | None = None, timeout_s: float = 3.0) -> list[ServedModel]:
    """`GET {url}/v1/models`.

    Args:
        url: the server's root URL, e.g. http://127.0.0.1:8000.
        api_key: sent as a bearer token when the server needs one.
        timeout_s: per request; a loading server may accept connections but answer late.

    Raises:
        OSError: no answer (urllib's URLError, a timeout, a refused connection).
        urllib.error.HTTPError: an answer other than 2xx (401: wrong or missing API key).
    """
    request = urllib.request.Request(f"{url}/v1/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=timeout_s) as reply:
        data = json.load(reply).get("data", [])
    return [ServedModel(m["id"], m.get("max_model_len"), m.get("root")) for m in data]


def probe(url: str, api_key: str | None = None, timeout_s: float = 3.0) -> tuple[list[ServedModel], str | None]:
    """`fetch_models`, with the failure turned into a sentence: (models, None) or ([], why not)."""
    try:
        return fetch_models(url, api_key, timeout_s), None
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            return [], ("HTTP 401: the server wants an API key" + (" and refused ours" if api_key else "")
                        + "; set VLLM_API_KEY (environment or .env) to the server's key")
        return [], f"HTTP {exc.code} {exc.reason} from {url}/v1/models (is this a vLLM server?)"
    except (OSError, ValueError) as exc:  # URLError is an OSError; ValueError: not JSON
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError):
            return [], "connection refused: nothing listens on that port"
        return [], f"no answer ({reason})"


def wait_until_healthy(url: str, *, timeout_s: float = 600.0, api_key: str | None = None,
                       is_alive: Callable[[], bool] | None = None, poll_s: float = 1.0) -> list[ServedModel]:
    """Poll `/v1/models` until the server answers with at least one model.

    Args:
        url: the server's root URL.
        timeout_s: give up after this many seconds (a tiny model takes ~40 s on 2 CPU cores).
        api_key: the server's key, if it has one.
        is_alive: returns False once the server process has exited: stop waiting at once
            instead of running into the timeout.
        poll_s: seconds between attempts.

    Returns:
        The served models.

    Raises:
        ServerNotReadyError: the process exited (ServerTimeoutError: `timeout_s` passed).
    """
    deadline = time.monotonic() + timeout_s
    why = "not asked yet"
    while True:
        models, why = probe(url, api_key, timeout_s=min(5.0, max(0.5, timeout_s)))
        if models:
            return models
        if is_alive is not None and not is_alive():
            raise ServerNotReadyError(f"the server process exited before {url}/v1/models answered ({why}).")
        if time.monotonic() >= deadline:
            raise ServerTimeoutError(f"{url}/v1/models did not answer within {timeout_s:.0f} s ({why}).")
        time.sleep(poll_s)


def port_owner(port: int) -> str | None:
    """'pid 123 (python3 ...)' for the process listening on `port`, if this user may see it."""
    listener = port_listener(port)
    if listener is None or listener[0] is None:
        return None
    pid, command = listener
    return f"pid {pid} ({command[:80]})" if command else f"pid {pid}"


def find_free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel's pick), e.g. for a second server or a test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
