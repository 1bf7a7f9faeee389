"""From per-request timings to a summary: the definitions of vLLM 0.32.0's `calculate_metrics`.

Read `labs/core/bench/DEFINITIONS.md` for what each number means. The rules, as vLLM applies them
(`vllm/benchmarks/serve.py`):

- only successful requests count; the output length is `usage.completion_tokens` (else the
  tokenizer's count of the generated text, else 1);
- TPOT = (e2el - ttft) / (output_len - 1), per request, only for requests with output_len > 1
  (`StreamTiming.tpot`); for goodput a request with output_len <= 1 has TPOT 0;
- ITL statistics pool EVERY gap of EVERY request (a long request weighs more than a short one),
  while TTFT/TPOT/E2EL statistics have one value per request;
- mean/median/std/percentiles are numpy's (`np.std` is the population std, `np.percentile`
  interpolates linearly); values are reported in milliseconds;
- throughputs divide by the benchmark's wall-clock duration (first request sent to last answer);
- goodput counts requests meeting EVERY given SLO (`value <= slo_ms`) per second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from labs.core.bench.client import RequestOutput

PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el")
GOODPUT_METRICS = ("ttft", "tpot", "e2el")


def parse_goodput(slo_pairs: Sequence[str]) -> dict[str, float]:
    """["ttft:500", "tpot:50"] -> {"ttft": 500.0, "tpot": 50.0} (milliseconds), checked like vLLM does."""
    slos: dict[str, float] = {}
    for pair in slo_pairs:
        name, sep, value = pair.partition(":")
        if not sep or name not in GOODPUT_METRICS:
            raise ValueError(f"goodput SLO {pair!r}: write NAME:MILLISECONDS with NAME one of {GOODPUT_METRICS}")
        slos[name] = float(value)
        if slos[name] < 0:
            raise ValueError(f"goodput SLO {pair!r} must be non-negative")
    return slos


def output_lens_of(outputs: Sequence[RequestOutput], count_tokens: Callable[[str], int] | None = None) -> list[int]:
    """Each request's output length as vLLM counts it (0 for failed requests)."""
    lens: list[int] = []
    for out in outputs:
        if not out.success:
            lens.append(0)
        elif out.output_tokens:
            lens.append(out.output_tokens)
        else:  # the server sent no usage: vLLM tokenizes the text, or counts 1 without a tokenizer
            lens.append(count_tokens(out.generated_text) if count_tokens else 1)
    return lens


def _stats(name: str, values_s: list[float], percentiles: Sequence[float]) -> dict[str, float]:
    """mean/median/std/pXX of `values_s`, in ms, keyed as vLLM's result JSON (`p99_ttft_ms`)."""
    values = values_s or [0.0]  # vLLM reports 0 for an empty list (`np.mean(x or 0)`)
    stats = {f"mean_{name}_ms": float(np.mean(values)) * 1000,
             f"median_{name}_ms": float(np.median(values)) * 1000,
             f"std_{name}_ms": float(np.std(values)) * 1000}
    for p in percentiles:
        p_word = str(int(p)) if int(p) == p else str(p)
        stats[f"p{p_word}_{name}_ms"] = float(np.percentile(values, p)) * 1000
    return stats


def peak_output_rate(outputs: Sequence[RequestOutput]) -> tuple[float, int]:
    """vLLM's `max_output_tokens_per_s` and `max_concurrent_requests`: busiest 1-second bucket.

    Token times are rebuilt from start_time + ttft + cumulative ITLs, bucketed by whole seconds
    since the first request; concurrency counts requests active at any time in a bucket.
    """
    done = [o for o in outputs if o.success]
    if not done:
        return 0.0, 0
    t0 = min(o.start_time for o in done)
    num_buckets = int(np.ceil(max(o.start_time + o.latency for o in done) - t0)) + 1
    tokens = np.zeros(num_buckets)
    active = np.zeros(num_buckets)
    for o in done:
        token_times = o.start_time + o.ttft + np.concatenate([[0.0], np.cumsum(o.itl)])
        for t in token_times:
            if 0 <= int(t - t0) < num_buckets:
                tokens[int(t - t0)] += 1
        active[int(o.start_time - t0):int(o.start_time + o.latency - t0) + 1] += 1
    return float(tokens.max()), int(active.max())


def summarize(outputs: Sequence[RequestOutput], duration_s: float, *, percentiles: Sequence[float] = (99,),
              goodput_slos_ms: dict[str, float] | None = None,
              count_tokens: Callable[[str], int] | None = None) -> dict[str, float | int | None]:
    """The summary `vllm bench serve` prints and saves, computed as it computes it.

    Args:
        outputs: one per request, successful or not.
        duration_s: wall clock of the whole run.
        percentiles: which percentiles to report (vLLM's `--metric-percentiles`, default 99).
        goodput_slos_ms: e.g. {"ttft": 500, "tpot": 50}; None/empty: request_goodput is None.
        count_tokens: counts tokens of a generated text when the server sent no usage.

    Returns:
        Keys as in vLLM's result JSON: completed, failed, total_input_tokens, total_output_tokens,
        request_throughput, request_goodput, output_throughput, total_token_throughput,
        {mean,median,std,pXX}_{ttft,tpot,itl,e2el}_ms, max_output_tokens_per_s, max_concurrent_requests.
    """
    output_lens = output_lens_of(outputs, count_tokens)
    done = [(o, n) for o, n in zip(outputs, output_lens) if o.success]
    ttfts = [o.ttft for o, _ in done]
    e2els = [o.latency for o, _ in done]
    tpots = [t for o, n in done if (t := o.tpot(n)) is not None]
    itls = [gap for o, _ in done for gap in o.itl]
    total_input = sum(o.prompt_len for o, _ in done)
    total_output = sum(output_lens)
    good = None
    if goodput_slos_ms:
        per_request = {"ttft": ttfts, "tpot": [o.tpot(n) or 0.0 for o, n in done], "e2el": e2els}
        # vLLM compares in seconds: slo_ms / 1000 >= value
        good_count = sum(all(slo / 1000 >= per_request[name][i] for name, slo in goodput_slos_ms.items())
                         for i in range(len(done)))
        good = good_count / duration_s
    peak_tokens, peak_concurrency = peak_output_rate(outputs)
    summary: dict[str, float | int | None] = {
        "duration": duration_s, "completed": len(done), "failed": len(outputs) - len(done),
        "total_input_tokens": total_input, "total_output_tokens": total_output,
        "request_throughput": len(done) / duration_s, "request_goodput": good,
        "output_throughput": total_output / duration_s,
        "total_token_throughput": (total_input + total_output) / duration_s,
        "max_output_tokens_per_s": peak_tokens, "max_concurrent_requests": peak_concurrency,
    }
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        summary |= _stats(name, values, percentiles)
    return summary


def queue_stats(outputs: Sequence[RequestOutput], percentiles: Sequence[float],
                rate_is_finite: bool) -> dict[str, float]:
    """vLLM's extra keys under `--max-concurrency`: client-side queueing, and E2EL including it.

    Why: with a concurrency cap a request may wait in the client before it is sent; E2EL starts
    at sending, so that wait is invisible unless reported separately.
    """
    done = [o for o in outputs if o.success]
    stats = _stats("client_queue_time", [o.client_queue_time for o in done], percentiles)
    if rate_is_finite:
        stats |= _stats("e2el_including_client_queue", [o.latency + o.client_queue_time for o in done], percentiles)
    return stats
