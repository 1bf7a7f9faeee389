"""The one streaming timer (`labs.core.bench.timing`): vLLM's TTFT/ITL/TPOT/E2EL, whoever streams.

Every test scripts the chunks AND the clock: a chunk arrives at a known time, so each timing has
one right value. The same scripted stream is then sent through the benchmark harness's aiohttp
client, the capstone's `openai` client and vLLM's own benchmark client, which must all agree.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from labs.core.bench.timing import StreamTimer, StreamTiming

LATENCY_COLUMNS = ["ttft_ms", "tpot_ms", "e2el_ms", "itl_ms", "num_itl"]


class ScriptedClock:
    """A clock that reads whatever the scripted stream last set: arrival times are exact."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the timer alone ----------------------------------------------------------------------------

def test_timer_follows_vllms_rules_on_a_scripted_stream() -> None:
    clock = ScriptedClock(10.0)
    timing = StreamTiming()
    timer = StreamTimer(timing, clock)
    timer.start()
    for now, has_choice in [(10.5, True),    # first chunk with a choice: TTFT, even if its text is empty
                            (10.7, True),
                            (10.7, True),    # flushed in the same network read: an ITL of 0
                            (11.0, True),
                            (11.4, False)]:  # the usage-only chunk: no ITL, does not end the request
        clock.now = now
        timer.chunk(has_choice)
    assert timer.finish()
    assert timing.start_time == 10.0
    assert timing.ttft == pytest.approx(0.5)
    assert timing.itl == pytest.approx([0.2, 0.0, 0.3])
    assert timing.latency == pytest.approx(1.0)
    assert sum(timing.itl) == pytest.approx(timing.latency - timing.ttft)
    assert timing.tpot(4) == pytest.approx(0.5 / 3)  # (e2el - ttft) / (output tokens - 1)
    assert timing.tpot(1) is None
    columns = timing.latency_columns(4)
    assert list(columns) == LATENCY_COLUMNS
    assert columns["ttft_ms"] == pytest.approx(500) and columns["e2el_ms"] == pytest.approx(1000)
    assert columns["tpot_ms"] == pytest.approx(500 / 3) and columns["itl_ms"] == pytest.approx([200, 0, 300])
    assert columns["num_itl"] == 3
    assert math.isnan(timing.latency_columns(1)["tpot_ms"])


def test_a_stream_without_a_choice_has_no_first_token() -> None:
    clock = ScriptedClock(1.0)
    timing = StreamTiming()
    timer = StreamTimer(timing, clock)
    timer.start()
    clock.now = 2.0
    timer.chunk(False)
    assert not timer.finish()
    assert (timing.ttft, timing.itl, timing.latency) == (0.0, [], 0.0)


def test_a_restarted_timer_forgets_the_previous_request() -> None:
    clock = ScriptedClock(0.0)
    timing = StreamTiming()
    timer = StreamTimer(timing, clock)
    timer.start()
    for clock.now in (1.0, 2.0):
        timer.chunk(True)
    timer.finish()
    clock.now = 5.0
    timer.start()
    clock.now = 5.25
    timer.chunk(True)
    assert timer.finish()
    assert (timing.start_time, timing.ttft, timing.itl, timing.latency) == (5.0, 0.25, [], 0.25)


# --- one scripted chat stream, three clients ----------------------------------------------------

def _chunk(content: str | None, finish_reason: str | None = None, role: str | None = None) -> dict[str, Any]:
    delta = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


USAGE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [],
         "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
# (arrival time, SSE messages in that one network read), as vLLM's chat endpoint streams them
READS: list[tuple[float, list[dict[str, Any] | str]]] = [
    (0.40, [_chunk("", role="assistant")]),  # the role chunk: vLLM's TTFT on chat
    (0.55, [_chunk("译")]),
    (0.80, [_chunk("文"), _chunk("本")]),      # two tokens in one read
    (1.00, [_chunk("", finish_reason="stop")]),
    (1.30, [USAGE, "[DONE]"]),                # neither moves the end of the request
]
EXPECTED = {"ttft": 0.40, "itl": [0.15, 0.25, 0.0, 0.20], "latency": 1.00}


def _sse(messages: list[dict[str, Any] | str]) -> bytes:
    return "".join(f"data: {m if isinstance(m, str) else json.dumps(m, ensure_ascii=False)}\n\n"
                   for m in messages).encode()


async def _scripted_reads(clock: ScriptedClock) -> AsyncIterator[bytes]:
    for now, messages in READS:
        clock.now = now
        yield _sse(messages)


class _FakeAiohttpResponse:
    status = 200

    def __init__(self, clock: ScriptedClock) -> None:
        self.content = self
        self.clock = clock

    async def __aenter__(self) -> _FakeAiohttpResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def iter_any(self) -> AsyncIterator[bytes]:
        return _scripted_reads(self.clock)


class _FakeAiohttpSession:
    """Just enough of `aiohttp.ClientSession.post` for the harness's and vLLM's clients."""

    def __init__(self, clock: ScriptedClock) -> None:
        self.clock = clock

    def post(self, url: str, json: dict[str, Any], headers: dict[str, str]) -> _FakeAiohttpResponse:
        return _FakeAiohttpResponse(self.clock)


def _timings(timing: Any) -> tuple[float, float, list[float], float]:
    return timing.start_time, timing.ttft, list(timing.itl), timing.latency


def _harness_output() -> Any:
    from labs.core.bench.client import RequestInput, send_request

    clock = ScriptedClock()
    return asyncio.run(send_request(_FakeAiohttpSession(clock), "http://server", "chat",  # type: ignore[arg-type]
                                    RequestInput("こんにちは", 5, 3, "m"), clock=clock))


def _capstone_attempt() -> Any:
    """The capstone's `stream_once` through the real `openai` client, served by a scripted transport."""
    import httpx
    import openai

    from labs.capstone_translation.request import stream_once

    clock = ScriptedClock()

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_scripted_reads(clock))

    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http_client:
            client = openai.AsyncOpenAI(base_url="http://server/v1", api_key="EMPTY", http_client=http_client,
                                        max_retries=0)
            return await stream_once(client, "m", [{"role": "user", "content": "こんにちは"}], 16,
                                     {"temperature": 0.0}, 30.0, clock=clock)

    return asyncio.run(go())


def test_the_benchmark_client_times_a_chat_stream_as_vllm_defines_it() -> None:
    out = _harness_output()
    assert out.success and out.generated_text == "译文本"
    assert (out.output_tokens, out.prompt_len) == (3, 7)
    assert out.ttft == pytest.approx(EXPECTED["ttft"])
    assert out.itl == pytest.approx(EXPECTED["itl"])
    assert out.latency == pytest.approx(EXPECTED["latency"])
    assert out.tpot(out.output_tokens) == pytest.approx((1.00 - 0.40) / 2)


def test_the_capstone_records_the_same_quantities_under_the_same_names() -> None:
    attempt = _capstone_attempt()
    assert attempt.text == "译文本" and attempt.finish_reason == "stop"
    assert (attempt.num_output_tokens, attempt.num_prompt_tokens) == (3, 7)
    harness = _harness_output()
    # the same clock readings through the same arithmetic: equal, not just close
    assert _timings(attempt) == _timings(harness)
    assert attempt.latency_columns(attempt.num_output_tokens) == harness.latency_columns(harness.output_tokens)


def test_the_capstones_request_table_has_the_benchmarks_latency_columns() -> None:
    from labs.capstone_translation.endpoint import Endpoint
    from labs.capstone_translation.results import DocumentResult
    from labs.capstone_translation.run import JobResult
    from labs.core.bench.runner import BenchmarkConfig, BenchmarkResult

    attempt, harness = _capstone_attempt(), _harness_output()
    job = JobResult([DocumentResult("doc", Path("doc.txt"), "translated", attempts=[attempt])],
                    Endpoint("http://server", "m", 4096, None, None), 1.0)
    capstone_row = job.requests_df.iloc[0]
    bench_row = BenchmarkResult(BenchmarkConfig(), [], [harness], {}).df.iloc[0]
    for column in LATENCY_COLUMNS + ["prompt_len", "output_len"]:
        assert capstone_row[column] == bench_row[column], column
    assert capstone_row["tpot_ms"] == pytest.approx(300.0)


def test_vllms_own_benchmark_client_agrees_on_the_same_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's `async_request_openai_chat_completions`, on the same reads and clock, gives the same numbers."""
    endpoint_request_func = pytest.importorskip("vllm.benchmarks.lib.endpoint_request_func")
    clock = ScriptedClock()
    monkeypatch.setattr(time, "perf_counter", clock)  # vLLM reads time.perf_counter() itself
    request = endpoint_request_func.RequestFuncInput(prompt="こんにちは", api_url="http://server/v1/chat/completions",
                                                     prompt_len=5, output_len=3, model="m")
    theirs = asyncio.run(endpoint_request_func.async_request_openai_chat_completions(
        request, _FakeAiohttpSession(clock)))  # type: ignore[arg-type]
    monkeypatch.undo()
    assert theirs.success, theirs.error
    ours = _harness_output()
    assert _timings(ours) == _timings(theirs)
    assert (ours.output_tokens, ours.generated_text) == (theirs.output_tokens, theirs.generated_text)
