"""Lab 6's predictions, checked against the real engine's trace and the real server.

    decode share   what part of the engine-step time went to decode-only steps, from vLLM's own
                   profiler trace (`profiling.annotated_steps`: every step is named by its prefill
                   and decode requests)
    TTFT or TPOT   which one grows more when 8 requests arrive at once instead of one at a time,
                   measured with the workbook's benchmark harness (`labs.core.bench`, vLLM's
                   definitions) against a running server

Why here and not in the notebook: the same functions are tested against the raw trace and the raw
per-request timings (tests/test_lab6_profiling_predictions.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from labs.core.predict import Verdict, check_choice, check_number

LATENCIES = ("TTFT", "TPOT")


def decode_share(steps: pd.DataFrame) -> float:
    """Share (0..1) of the engine-step time spent in decode-only steps.

    Args:
        steps: `profiling.annotated_steps(trace)`: one row per engine step, its `ms` and
            `prefill_reqs` (0 in a decode-only step).
    """
    total = steps["ms"].sum()
    if steps.empty or total <= 0:
        raise ValueError("the trace has no timed engine steps")
    return float(steps.loc[steps["prefill_reqs"] == 0, "ms"].sum() / total)


def check_decode_share(predicted: float | None, steps: pd.DataFrame, tolerance: float = 10.0,
                       quiet: bool = False) -> Verdict:
    """The learner's decode share in percent, against the trace (right within `tolerance` points)."""
    share = 100 * decode_share(steps)
    decode = steps[steps["prefill_reqs"] == 0]
    prefill = steps[steps["prefill_reqs"] > 0]
    why = (f"From vLLM's profiler trace: {len(prefill)} step(s) with prefill took {prefill['ms'].sum():.1f} ms "
           f"({prefill['ms'].mean():.2f} ms each), {len(decode)} decode-only steps {decode['ms'].sum():.1f} ms "
           f"({decode['ms'].mean() if len(decode) else math.nan:.2f} ms each). A prefill step is the longest, but "
           "there is one per prompt batch, and one decode step per output token after the first.")
    return check_number("decode steps' share of the engine-step time", predicted, round(share, 1), why,
                        tolerance=tolerance, unit="%", quiet=quiet)


@dataclass(frozen=True)
class BurstLatency:
    """Median TTFT and TPOT of requests sent one at a time vs all at once, on the same server.

    Attributes:
        alone: the benchmark of requests sent one after another (max_concurrency=1).
        burst: the benchmark of `num_burst` requests sent at the same moment.
    """

    alone: Any  # labs.core.bench.BenchmarkResult
    burst: Any

    @staticmethod
    def _median(result: Any, column: str) -> float:
        return float(result.df[column].median())

    @property
    def ttft_ratio(self) -> float:
        """Median TTFT with the burst / alone."""
        return self._median(self.burst, "ttft_ms") / self._median(self.alone, "ttft_ms")

    @property
    def tpot_ratio(self) -> float:
        """Median TPOT with the burst / alone."""
        return self._median(self.burst, "tpot_ms") / self._median(self.alone, "tpot_ms")

    @property
    def moved_more(self) -> str:
        """"TTFT" or "TPOT": the one whose median grew by the larger factor."""
        return "TTFT" if self.ttft_ratio >= self.tpot_ratio else "TPOT"

    def table(self) -> pd.DataFrame:
        rows = [{"requests": label, "median TTFT ms": self._median(r, "ttft_ms"),
                 "median TPOT ms": self._median(r, "tpot_ms")}
                for label, r in (("one at a time", self.alone), (f"{len(self.burst.outputs)} at once", self.burst))]
        return pd.DataFrame(rows).set_index("requests").round(2)


def burst_latency(base_url: str, api_key: str | None = None, num_burst: int = 8, num_alone: int = 3,
                  input_len: int = 32, output_len: int = 16) -> BurstLatency:
    """Measure TTFT and TPOT on the server at `base_url`: `num_alone` requests one at a time, then `num_burst` at once.

    Every request has the same prompt and output lengths (ignore_eos), so only the arrival differs.
    """
    from labs.core import bench

    common = {"base_url": base_url, "api_key": api_key, "input_len": input_len, "output_len": output_len,
              "request_rate": math.inf, "disable_tqdm": True}
    alone = bench.run_benchmark(num_prompts=num_alone, max_concurrency=1, **common)
    burst = bench.run_benchmark(num_prompts=num_burst, **common)
    return BurstLatency(alone, burst)


def check_moved_more(predicted: str | None, measured: BurstLatency, quiet: bool = False) -> Verdict:
    """The learner's "TTFT" or "TPOT", against which median grew more with the burst."""
    n = len(measured.burst.outputs)
    why = (f"Measured on this server: median TTFT x{measured.ttft_ratio:.2f}, median TPOT x{measured.tpot_ratio:.2f} "
           f"with {n} requests at once. A request's first token waits for the prefill of every prompt that "
           "arrived with it (and, through the API server, for their tokenization); afterwards one decode step "
           f"computes a token for all {n}, and on a small model a step of {n} costs little more than a step of one.")
    if measured.moved_more == "TPOT":
        why += (" Here TPOT grew more: on a machine with few cores the API server streams every request's tokens "
                "on the cores the engine busy-waits on, so each token waits its turn (see section 5's note).")
    return check_choice(f"grows more with {n} requests at once", predicted, measured.moved_more, why,
                        choices=LATENCIES, quiet=quiet)
