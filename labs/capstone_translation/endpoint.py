"""The server a translation job talks to: where, which model, how long a context, how to count tokens.

Everything is asked of the server before the first chunk is sent, so a wrong URL, key or model
name fails in one second with a message that says what to do, not after an hour of work.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labs.core.client import ModelNotServedError
from labs.core.errors import WorkbookError
from labs.core.serve.config import API_KEY_ENV, default_url, env_setting, server_root_url
from labs.core.serve.health import ServedModel, fetch_models, probe


class ServerUnavailableError(WorkbookError):
    """No usable answer from the server's /v1/models."""


@dataclass(frozen=True)
class Endpoint:
    """A checked server + model.

    Attributes:
        base_url: the server's root URL (the OpenAI client gets `{base_url}/v1`).
        model: the served model name requests use.
        max_model_len: the context length the server reports for it.
        root: what the server loaded (a local folder for the workbook's own server).
        api_key: sent as a bearer token (None: no key).
    """

    base_url: str
    model: str
    max_model_len: int
    root: str | None
    api_key: str | None

    def __repr__(self) -> str:  # never print the key
        return f"Endpoint({self.base_url!r}, model={self.model!r}, max_model_len={self.max_model_len})"


def connect(base_url: str | None = None, model: str | None = None, api_key: str | None = None,
            default_max_model_len: int | None = None) -> Endpoint:
    """Find the server and check the model (`VLLM_BASE_URL`, `VLLM_MODEL`, `VLLM_API_KEY` by default).

    Args:
        base_url: root or /v1 URL; default `VLLM_BASE_URL`, else the workbook's server.
        model: the served name; default `VLLM_MODEL`, else the only (or first) model served.
        api_key: default `VLLM_API_KEY` (environment or .env).
        default_max_model_len: used only when the server does not report `max_model_len`
            (servers other than vLLM); without it such a server is refused.

    Raises:
        ServerUnavailableError: unreachable, wrong key, or not an OpenAI-compatible server.
        ModelNotServedError: `model` is not served; the message lists what is.
    """
    url = server_root_url(base_url) if base_url else default_url()
    api_key = api_key or env_setting(API_KEY_ENV)
    models, why = probe(url, api_key, timeout_s=10.0)
    if not models:
        raise ServerUnavailableError(
            f"No translation server at {url} ({why or 'it serves no models'}). Start the workbook's "
            f"server with `make vllm-start-bg` (or `python -m labs.core.serve start-bg`), or point "
            f"VLLM_BASE_URL at a running OpenAI-compatible server.")
    wanted = model or env_setting("VLLM_MODEL")
    chosen = _choose(models, wanted, url)
    max_model_len = chosen.max_model_len or default_max_model_len
    if not max_model_len:
        raise ServerUnavailableError(
            f"{url}/v1/models does not report max_model_len for {chosen.id!r} (not a vLLM server?); "
            "pass --max-model-len with the server's context length.")
    return Endpoint(url, chosen.id, int(max_model_len), chosen.root, api_key)


def _choose(models: list[ServedModel], wanted: str | None, url: str) -> ServedModel:
    if wanted is None:
        return models[0]
    for served in models:
        if wanted in (served.id, served.root):
            return served
    raise ModelNotServedError(
        f"The server at {url} does not serve a model named {wanted!r}. It serves: "
        f"{', '.join(repr(m.id) for m in models)}. Pass one of those with --model (or VLLM_MODEL).")


def _post(endpoint: Endpoint, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(f"{endpoint.base_url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    if endpoint.api_key:
        request.add_header("Authorization", f"Bearer {endpoint.api_key}")
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.load(reply)


@dataclass(frozen=True)
class TokenCounter:
    """Counts tokens as the server will: its own tokenizer, whichever way it can be reached.

    Attributes:
        count_text: tokens of a plain text (no special tokens).
        count_messages: tokens of a chat request (chat template and generation prompt included).
        source: how counting is done, for the log ("local tokenizer ...", "server /tokenize", ...).
    """

    count_text: Callable[[str], int]
    count_messages: Callable[[list[dict[str, str]]], int]
    source: str


def local_token_counter(tok: Any, where: str) -> TokenCounter:
    """A counter over a tokenizer loaded here (`where` names it in logs)."""
    return TokenCounter(
        lambda text: len(tok(text, add_special_tokens=False)["input_ids"]),
        lambda messages: len(tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)),
        f"local tokenizer of {where}")


def token_counter(endpoint: Endpoint) -> TokenCounter:
    """The best available counter: the model folder's tokenizer if the server loaded a local
    folder (the same files, no network), else the server's `/tokenize` (vLLM), else an estimate.

    Why not guess from characters by default: Japanese runs 0.5-2 tokens per character depending
    on the tokenizer, and a wrong guess either overflows the context or wastes it.
    """
    if endpoint.root and Path(endpoint.root, "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        return local_token_counter(AutoTokenizer.from_pretrained(endpoint.root), endpoint.root)
    try:
        _post(endpoint, "/tokenize", {"model": endpoint.model, "prompt": "テスト"})
    except (urllib.error.URLError, OSError, ValueError):
        # 1.5 tokens per character over-counts for most tokenizers: chunks come out small, never too big
        return TokenCounter(lambda text: int(len(text) * 1.5) + 1,
                            lambda messages: sum(int(len(m["content"]) * 1.5) + 8 for m in messages) + 8,
                            "estimate (1.5 tokens per character; the server has no /tokenize)")
    return TokenCounter(
        lambda text: _post(endpoint, "/tokenize", {"model": endpoint.model, "prompt": text,
                                                    "add_special_tokens": False})["count"],
        lambda messages: _post(endpoint, "/tokenize", {"model": endpoint.model, "messages": messages,
                                                        "add_generation_prompt": True})["count"],
        "server /tokenize")


def served_models(base_url: str | None = None, api_key: str | None = None) -> list[ServedModel]:
    """`GET /v1/models` of the server (for notebooks and messages)."""
    return fetch_models(server_root_url(base_url) if base_url else default_url(), api_key or env_setting(API_KEY_ENV))
