"""Talk to the workbook's vLLM server with the `openai` client, with errors that say what to do.

The common first failure is a 404 "The model ... does not exist": the `model=` a client sends
must equal the server's `--served-model-name`, not the folder it loaded. `chat` and
`check_model` turn that 404 into a message listing what the server does serve.

Where the server is: `base_url`, else `VLLM_BASE_URL` (environment or `.env`), else
http://127.0.0.1:8000/v1; its key: `api_key`, else `VLLM_API_KEY`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labs.core.errors import WorkbookError
from labs.core.serve.config import API_KEY_ENV, DEFAULT_ENV_FILE, default_url, env_setting, server_root_url

NO_KEY = "EMPTY"  # the openai client insists on a key; a server without --api-key ignores it


class ModelNotServedError(WorkbookError, LookupError):
    """The server does not serve the requested model name; the message lists the names it serves.

    One class for every client of the workbook (`chat`, `check_model`, the capstone's `connect`),
    so that one `except ModelNotServedError` catches a wrong `model=` wherever it was sent.
    """


def make_client(base_url: str | None = None, api_key: str | None = None, env_file: Path = DEFAULT_ENV_FILE) -> Any:
    """An `openai.OpenAI` client for the server (`base_url` may be the root or the /v1 URL)."""
    import openai

    root = server_root_url(base_url or default_url(env_file))
    return openai.OpenAI(base_url=f"{root}/v1", api_key=api_key or env_setting(API_KEY_ENV, env_file) or NO_KEY)


def served_model_names(client: Any) -> list[str]:
    """What the server serves (`GET /v1/models`), as the names a request must use."""
    return [model.id for model in client.models.list()]


def _not_served(client: Any, model: str, detail: str = "") -> ModelNotServedError:
    names = served_model_names(client)
    return ModelNotServedError(
        f"The server at {client.base_url} does not serve a model named {model!r}{detail}. It serves: "
        f"{', '.join(repr(n) for n in names) or 'nothing'}. Pass one of those as model= (the name comes from "
        "the server's --served-model-name; list them with: curl <server>/v1/models)."
    )


def check_model(model: str, *, base_url: str | None = None, api_key: str | None = None,
                env_file: Path = DEFAULT_ENV_FILE) -> None:
    """Raise `ModelNotServedError` (listing the served names) unless the server serves `model`."""
    client = make_client(base_url, api_key, env_file)
    if model not in served_model_names(client):
        raise _not_served(client, model)


def chat(messages: list[dict[str, str]], *, model: str | None = None, base_url: str | None = None,
         api_key: str | None = None, max_tokens: int = 64, temperature: float = 0.0,
         env_file: Path = DEFAULT_ENV_FILE, **kwargs: Any) -> str:
    """One chat completion; returns the reply's text.

    Args:
        messages: OpenAI chat messages, e.g. `labs.core.models.phrasebook.translation_messages(ja)`.
        model: the served model name; default: the first one the server lists.
        base_url: the server (root or /v1 URL); default `VLLM_BASE_URL`, else 127.0.0.1:8000.
        api_key: default `VLLM_API_KEY`.
        max_tokens: longest reply in tokens.
        temperature: 0.0 is greedy decoding: the same reply every time.
        env_file: where VLLM_BASE_URL / VLLM_API_KEY may be set.
        **kwargs: more `chat.completions.create` arguments (top_p, seed, stop, ...).

    Raises:
        ModelNotServedError: the server answered 404 for `model`; the message lists what it serves.
    """
    import openai

    client = make_client(base_url, api_key, env_file)
    model = model or served_model_names(client)[0]
    try:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                               temperature=temperature, **kwargs)
    except openai.NotFoundError as exc:
        raise _not_served(client, model, f" (HTTP 404: {exc.message})") from exc
    return reply.choices[0].message.content or ""
