"""The one streaming timer: TTFT, ITL, E2EL and TPOT of a streamed completion, as `vllm bench serve` defines them.

Every client that streams a completion and reports its latency (the benchmark harness's
`labs.core.bench.client`, the capstone's `labs.capstone_translation.request`) times it here, so
that a `ttft_ms` or `itl_ms` column means the same thing wherever it appears. The rules are
those of vLLM 0.32.0's `vllm/benchmarks/lib/endpoint_request_func.py` and
`vllm/benchmarks/serve.py: calculate_metrics` (see `labs/core/bench/DEFINITIONS.md`):

- the clock starts just before the request is sent (`start_time`);
- TTFT is the arrival of the first chunk that carries a `choices` entry, even with empty text
  (on the chat endpoint: the assistant-role chunk);
- every later chunk carrying a `choices` entry adds one ITL: the time since the previous one;
- the end-to-end latency (`latency`) ends at the LAST chunk carrying a `choices` entry: the
  trailing usage-only chunk and `[DONE]` do not count;
- TPOT = (latency - ttft) / (output_tokens - 1), undefined for outputs of one token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]  # seconds, monotonic: time.perf_counter, or a scripted clock in tests


@dataclass
class StreamTiming:
    """The timings of one streamed request, with vLLM's field names (`RequestFuncOutput`); seconds.

    A base class, not a member, so that the benchmark's `RequestOutput` and the capstone's
    `Attempt` carry these four fields under the same names and feed the same summaries.

    Attributes:
        start_time: the clock just before the request was sent.
        ttft: time to first token: start_time to the first chunk carrying a choice.
        itl: one inter-token latency per choice-carrying chunk after the first (len = chunks - 1).
        latency: end-to-end latency (E2EL): start_time to the last chunk carrying a choice.
    """

    start_time: float = 0.0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0

    def tpot(self, output_len: int) -> float | None:
        """Time per output token excluding the first (vLLM's TPOT), in seconds.

        Why the first token is excluded: it carries the prefill, which TTFT already reports.

        Args:
            output_len: the request's output tokens (`usage.completion_tokens`).

        Returns:
            (latency - ttft) / (output_len - 1); None when output_len <= 1 (undefined).
        """
        return (self.latency - self.ttft) / (output_len - 1) if output_len > 1 else None

    def latency_columns(self, output_len: int) -> dict[str, float | int | list[float]]:
        """This request's latencies as the per-request table columns every report shares (ms).

        Args:
            output_len: the request's output tokens.

        Returns:
            ttft_ms, tpot_ms (NaN when undefined), e2el_ms, itl_ms (a list), num_itl.
        """
        tpot = self.tpot(output_len)
        return {"ttft_ms": self.ttft * 1000, "tpot_ms": math.nan if tpot is None else tpot * 1000,
                "e2el_ms": self.latency * 1000, "itl_ms": [gap * 1000 for gap in self.itl],
                "num_itl": len(self.itl)}


class StreamTimer:
    """Fills a `StreamTiming` from the chunks of one stream as they arrive.

    Use: `start()` just before sending, `chunk(has_choice)` once per parsed chunk (SSE message or
    client event) in arrival order, `finish()` once the stream has ended.

    Args:
        timing: the record to fill (a `RequestOutput`, an `Attempt`, a plain `StreamTiming`).
        clock: read once by `start()` and once by each `chunk()`; injectable so that tests can
            script arrival times.
    """

    def __init__(self, timing: StreamTiming, clock: Clock = time.perf_counter) -> None:
        self.timing = timing
        self.clock = clock
        self.first_chunk_received = False
        self._most_recent = 0.0

    def start(self) -> None:
        """Start the clock: call it just before the request goes out."""
        self.timing.start_time = self._most_recent = self.clock()
        self.first_chunk_received = False
        self.timing.ttft, self.timing.itl, self.timing.latency = 0.0, [], 0.0

    def chunk(self, has_choice: bool) -> None:
        """Record one arrived chunk.

        Args:
            has_choice: the chunk carries a `choices` entry (whatever its text). Usage-only
                chunks pass False: they neither end a gap nor move the end of the request.
        """
        timestamp = self.clock()
        if not has_choice:
            return
        if self.first_chunk_received:
            self.timing.itl.append(timestamp - self._most_recent)
        else:
            self.first_chunk_received = True
            self.timing.ttft = timestamp - self.timing.start_time
        self._most_recent = timestamp

    def finish(self) -> bool:
        """Close the request: the latency ends at the last chunk that carried a choice.

        Returns:
            Whether a first token arrived (no TTFT otherwise: the request did not succeed).
        """
        self.timing.latency = self._most_recent - self.timing.start_time
        return self.first_chunk_received
