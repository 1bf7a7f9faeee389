"""One chunk, one request: streamed (so TTFT/TPOT are measured), checked, retried within bounds.

Two kinds of retry, kept apart on purpose:
- transport: connection errors, timeouts, 429 and 5xx are retried with exponential backoff and
  the SAME request (the server never answered it, so nothing about the request was wrong);
- content: an answer that fails `labs.capstone_translation.checks` is retried with ADJUSTED sampling
  (some temperature, a frequency penalty, a seed per attempt), because greedy decoding would
  produce the same bad answer again.

Attempts are numbered per chunk ACROSS runs: the journal records how many a chunk has used, and
a rerun continues the sequence (attempt 4, 5, 6 after 1-3 were rejected) instead of replaying
the same seeds, which would reproduce the same rejected answers forever.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from labs.capstone_translation.checks import Verdict, check_answer
from labs.core.bench.timing import Clock, StreamTimer, StreamTiming
from labs.core.errors import WorkbookError


class ChunkFailedError(WorkbookError):
    """A chunk had no acceptable answer within the retry budget (nothing was journaled for it).

    Attributes:
        attempts: what was tried (for timings and the log).
    """

    def __init__(self, message: str, attempts: list[Attempt] | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts or []


class NoAcceptableAnswerError(ChunkFailedError):
    """Every answer to a chunk failed the checks: a content failure, unlike a dead server.

    Why its own class: only these chunks may be kept in the source language in a partial
    document (`TranslateConfig.allow_partial`); a transport failure says nothing about the text.
    """


class FatalRequestError(WorkbookError):
    """An answer no retry can fix: wrong model name, wrong API key, a request the server rejects."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on both kinds of retry.

    Attributes:
        max_content_retries: extra attempts after a rejected answer (2: three tries in all).
        max_transport_retries: extra attempts after a transport error.
        backoff_s: first wait after a transport error; doubles each time (1, 2, 4, 8 s).
        timeout_s: per request; long chunks on a busy CPU server can take minutes.
    """

    max_content_retries: int = 2
    max_transport_retries: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 600.0


MAX_RETRY_TEMPERATURE = 0.9  # beyond this a small model's answers turn to noise, not to other translations
MAX_FREQUENCY_PENALTY = 1.2  # higher penalises the characters a faithful translation must repeat


def sampling_for_attempt(attempt: int, temperature: float) -> dict[str, Any]:
    """Sampling parameters of a chunk's attempt 0, 1, 2... (counted across runs).

    Why these: a loop or a dropped paragraph under greedy decoding is a property of the most
    likely continuation; a little temperature and a frequency penalty step off that path while
    staying close to it. Both grow with the attempt number up to a ceiling, and the seed IS the
    attempt number: each attempt is reproducible, and no two attempts of a chunk are the same.

    Args:
        attempt: 0 for a chunk's first request ever; a rerun continues from the journal's count.
        temperature: the job's temperature (0: greedy first attempt).

    Returns:
        Keyword arguments for the chat completions request.
    """
    if attempt == 0:
        return {"temperature": temperature}
    return {"temperature": max(temperature, min(0.3 * attempt, MAX_RETRY_TEMPERATURE)), "top_p": 0.95,
            "frequency_penalty": min(0.3 * attempt, MAX_FREQUENCY_PENALTY), "seed": attempt}


def max_tokens_for(max_model_len: int, num_prompt_tokens: int, num_source_tokens: int) -> int:
    """`max_tokens` of one request: what the context has left, but no more than a translation needs.

    Why the ceiling: a model caught in a repetition loop generates until `max_tokens`; with the
    whole remaining context allowed, one loop would cost thousands of tokens before the checks
    could reject it. Four output tokens per source token (plus room for markers) is far above
    any real Japanese-to-Chinese translation.
    """
    return max(1, min(max_model_len - num_prompt_tokens, 4 * num_source_tokens + 64))


@dataclass
class Attempt(StreamTiming):
    """What one attempt returned, timed by the benchmark harness's `StreamTimer` (seconds).

    The timings (`start_time`, `ttft`, `itl`, `latency`) are `StreamTiming`'s, so the job's
    request table has the harness's columns with the harness's meaning (`latency_columns`).

    Attributes:
        text: the answer, joined from the streamed deltas.
        number / sampling: which attempt of its chunk it was and what was sent, so the log shows
            that a rerun tried something new.
        finish_reason: "stop", or "length" when `max_tokens` cut the answer.
        num_prompt_tokens / num_output_tokens: the server's usage.
        verdict: the checks' judgement (None until checked).
    """

    text: str = ""
    number: int = 0
    sampling: dict[str, Any] = field(default_factory=dict)
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    verdict: Verdict | None = None


async def stream_once(client: Any, model: str, messages: list[dict[str, str]], max_tokens: int,
                      sampling: dict[str, Any], timeout_s: float, clock: Clock = time.perf_counter) -> Attempt:
    """One streamed chat completion, timed chunk by chunk as the benchmark harness times its requests.

    Args:
        client: an `openai.AsyncOpenAI` (or anything with its `chat.completions.create`).
        model / messages / max_tokens / sampling: the request.
        timeout_s: for the whole request.
        clock: the timer's clock (see `labs.core.bench.timing.StreamTimer`).

    Returns:
        The attempt: text, finish reason, usage and timings (not yet checked).
    """
    attempt = Attempt()
    timer = StreamTimer(attempt, clock)
    parts: list[str] = []
    timer.start()
    stream = await client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, stream=True,
        stream_options={"include_usage": True}, timeout=timeout_s, **sampling)
    async for event in stream:
        timer.chunk(bool(event.choices))
        if event.usage is not None:
            attempt.num_prompt_tokens = event.usage.prompt_tokens
            attempt.num_output_tokens = event.usage.completion_tokens
        for choice in event.choices:
            if choice.delta and choice.delta.content:
                parts.append(choice.delta.content)
            if choice.finish_reason:
                attempt.finish_reason = choice.finish_reason
    timer.finish()
    attempt.text = "".join(parts)
    return attempt


async def request_with_backoff(client: Any, model: str, messages: list[dict[str, str]], max_tokens: int,
                               sampling: dict[str, Any], policy: RetryPolicy) -> Attempt:
    """`stream_once`, retried on transport errors with exponential backoff.

    Raises:
        FatalRequestError: 400/401/403/404: retrying the same request cannot help.
    """
    import openai

    for retry in range(policy.max_transport_retries + 1):
        try:
            return await stream_once(client, model, messages, max_tokens, sampling, policy.timeout_s)
        except openai.NotFoundError as exc:
            raise FatalRequestError(f"HTTP 404 for model {model!r}: {exc.message}. Check --model "
                                    "(the server's model list: python -m labs.core.serve status).") from exc
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise FatalRequestError(f"HTTP {exc.status_code}: the server refused our API key; set "
                                    "VLLM_API_KEY (environment or .env) to the server's key.") from exc
        except openai.BadRequestError as exc:
            raise FatalRequestError(f"HTTP 400: the server rejected the request: {exc.message}") from exc
        except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                openai.InternalServerError) as exc:
            if retry == policy.max_transport_retries:
                raise ChunkFailedError(f"gave up after {retry + 1} attempts: {type(exc).__name__}: {exc}") from exc
            await asyncio.sleep(policy.backoff_s * 2 ** retry)
    raise AssertionError("unreachable")


async def translate_chunk(client: Any, model: str, messages: list[dict[str, str]], sources: list[str],
                          max_tokens: int, temperature: float, policy: RetryPolicy,
                          first_attempt: int = 0) -> tuple[Attempt, list[Attempt]]:
    """Ask until an answer passes the checks, at most 1 + `max_content_retries` times.

    Args:
        client / model: an `openai.AsyncOpenAI` and the served model name.
        messages: the request; sources: the segments it asks for (what the answer is checked against).
        max_tokens: per request; temperature: the job's (see `sampling_for_attempt`).
        policy: retry bounds.
        first_attempt: attempts this chunk already used in earlier runs (from its journal), so a
            rerun sends new seeds instead of replaying rejected answers.

    Returns:
        (the accepted attempt, every attempt in order: the rejected ones explain the retries).

    Raises:
        NoAcceptableAnswerError: no attempt passed; the message lists each attempt's problems.
        ChunkFailedError: the server could not be reached (see `request_with_backoff`).
    """
    attempts: list[Attempt] = []
    for number in range(first_attempt, first_attempt + policy.max_content_retries + 1):
        sampling = sampling_for_attempt(number, temperature)
        attempt = await request_with_backoff(client, model, messages, max_tokens, sampling, policy)
        attempt.number, attempt.sampling = number, sampling
        attempt.verdict = check_answer(attempt.text, sources, attempt.finish_reason)
        attempts.append(attempt)
        if attempt.verdict.ok:
            return attempt, attempts
    problems = "; ".join(f"attempt {a.number + 1}: {', '.join(a.verdict.problems)}" for a in attempts if a.verdict)
    raise NoAcceptableAnswerError(f"no acceptable translation after {len(attempts)} attempts ({problems})", attempts)
