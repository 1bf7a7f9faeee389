"""One streamed request to an OpenAI-compatible server, timed exactly as `vllm bench serve` times it.

The request and its parsing follow vLLM 0.32.0's `vllm/benchmarks/lib/endpoint_request_func.py`
(`async_request_openai_completions` / `async_request_openai_chat_completions`); the timing rules
(TTFT, ITL, E2EL, TPOT) are `labs.core.bench.timing`'s, shared with every other streaming client
of the workbook. The output token count is `usage.completion_tokens` from the final chunk
(`stream_options.include_usage`); the prompt length is `usage.prompt_tokens`.
"""

from __future__ import annotations

import codecs
import json
import time
import traceback
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from labs.core.bench.timing import Clock, StreamTimer, StreamTiming

Endpoint = Literal["completions", "chat"]
ENDPOINT_PATHS: dict[str, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
# Long, like vLLM's (6 h): a saturated server may take minutes per request; failing one early
# would bias every percentile.
TIMEOUT = aiohttp.ClientTimeout(total=6 * 60 * 60)


@dataclass
class RequestInput:
    """What to send.

    Attributes:
        prompt: the prompt text (sent as one user message on the chat endpoint).
        prompt_len: its length in tokens, as far as we know before sending (the server's
            `usage.prompt_tokens` replaces it).
        output_len: `max_tokens`; with `ignore_eos` every request generates exactly this many.
        model: the served model name.
        ignore_eos: keep generating past EOS (vLLM extension), so output lengths are fixed.
        request_id: sent as `x-request-id`, so server logs can be matched to rows.
    """

    prompt: str
    prompt_len: int
    output_len: int
    model: str
    ignore_eos: bool = True
    request_id: str | None = None


@dataclass
class RequestOutput(StreamTiming):
    """What came back, with vLLM's field names (`RequestFuncOutput`). Times are in seconds.

    The timings (`start_time`, `ttft`, `itl`, `latency`) are `StreamTiming`'s.

    Attributes:
        generated_text: the streamed text, joined.
        success: a first token arrived and the stream ended without error.
        output_tokens: `usage.completion_tokens` (0 when the server sent no usage).
        prompt_len: `usage.prompt_tokens` when sent, else the input's estimate.
        error: why the request failed ("" when it did not).
        client_queue_time: time spent waiting for a `max_concurrency` slot before sending.
    """

    generated_text: str = ""
    success: bool = False
    output_tokens: int = 0
    prompt_len: int = 0
    error: str = ""
    client_queue_time: float = 0.0


def sse_messages(buffer: str) -> tuple[list[str], str]:
    """Split complete SSE messages (separated by a blank line) off the front of `buffer`.

    Why our own splitter: network chunks do not respect message boundaries; one chunk can hold
    half a message or three. Returns (complete messages, the incomplete rest).
    """
    *complete, rest = buffer.split("\n\n")
    return [m.strip() for m in complete if m.strip()], rest


def build_payload(endpoint: Endpoint, request: RequestInput) -> dict[str, Any]:
    """The JSON body vLLM's benchmark sends for this endpoint: streamed, usage in the last chunk.

    Sampling is left to the server's defaults, as `vllm bench serve` does unless given
    `--temperature`; with `ignore_eos` the output length is `max_tokens` whatever is sampled.
    """
    payload: dict[str, Any] = {"model": request.model, "stream": True, "stream_options": {"include_usage": True}}
    if endpoint == "chat":
        payload |= {"messages": [{"role": "user", "content": request.prompt}],
                    "max_completion_tokens": request.output_len}
    else:
        payload |= {"prompt": request.prompt, "max_tokens": request.output_len, "repetition_penalty": 1.0}
    if request.ignore_eos:
        payload["ignore_eos"] = True
    return payload


def _chunk_text(endpoint: Endpoint, choice: dict[str, Any]) -> str:
    return (choice.get("delta", {}).get("content") if endpoint == "chat" else choice.get("text")) or ""


async def send_request(session: aiohttp.ClientSession, base_url: str, endpoint: Endpoint, request: RequestInput,
                       api_key: str | None = None, clock: Clock = time.perf_counter) -> RequestOutput:
    """POST one streamed request and time every chunk.

    Args:
        session: a shared aiohttp session (one connection pool for the whole run).
        base_url: the server's root URL, e.g. http://127.0.0.1:8000.
        endpoint: "completions" or "chat".
        request: what to send.
        api_key: sent as a bearer token when set.
        clock: the timer's clock (see `StreamTimer`).

    Returns:
        The timings; failures are returned (success=False, error=...), never raised, so one bad
        request does not end a benchmark.
    """
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if request.request_id:
        headers["x-request-id"] = request.request_id
    output = RequestOutput(prompt_len=request.prompt_len)
    timer = StreamTimer(output, clock)
    decoder = codecs.getincrementaldecoder("utf-8")()  # a UTF-8 character may straddle two chunks
    buffer, text = "", []
    timer.start()
    try:
        async with session.post(base_url + ENDPOINT_PATHS[endpoint], json=build_payload(endpoint, request),
                                headers=headers) as response:
            if response.status != 200:
                output.error = f"HTTP {response.status}: {(await response.text())[:500]}"
                return output
            async for raw in response.content.iter_any():
                messages, buffer = sse_messages(buffer + decoder.decode(raw))
                for message in messages:
                    if message.startswith(":"):  # an SSE comment (keep-alive ping)
                        continue
                    data_str = message.removeprefix("data:").strip()
                    if data_str == "[DONE]":
                        continue
                    data = json.loads(data_str)
                    choices = data.get("choices")
                    timer.chunk(bool(choices))
                    if choices:
                        text.append(_chunk_text(endpoint, choices[0]))
                    elif usage := data.get("usage"):
                        output.output_tokens = usage.get("completion_tokens") or 0
                        if usage.get("prompt_tokens") is not None:
                            output.prompt_len = usage["prompt_tokens"]
        output.generated_text = "".join(text)
        output.success = timer.finish()
        if not output.success:
            output.error = "no chunk with a token arrived, so there is no TTFT"
    except Exception:  # noqa: BLE001 - recorded per request, like vLLM does
        output.error = traceback.format_exc()
    return output
