"""The server's own view of a run: its Prometheus `/metrics`, parsed, diffed, and polled over time.

vLLM measures inside the engine what the client measures from outside: TTFT, inter-token
latency, end-to-end latency, and what the client cannot see at all: time queued in the
scheduler, prefill and decode time, KV cache usage, prefix cache hits. Histograms and counters
only grow, so a run's own numbers are `after - before` (`snapshot` before, `snapshot` after,
`delta`). Gauges (KV cache usage, running/waiting requests) are instantaneous: a
`MetricsPoller` samples them during the run.

Parsing is `prometheus_client`'s text parser: label sets (engine, model_name, finished_reason)
are summed over, so the numbers cover every engine the server runs.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import requests
from prometheus_client.parser import text_string_to_metric_families

from labs.core.bench.sampling import BackgroundSampler

# vLLM 0.32.0 names, as its /metrics lists them.
LATENCY_HISTOGRAMS = (
    "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
    "vllm:request_time_per_output_token_seconds", "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds", "vllm:request_prefill_time_seconds", "vllm:request_decode_time_seconds",
    "vllm:request_inference_time_seconds",
)
COUNTERS = (
    "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total", "vllm:request_success_total", "vllm:num_preemptions_total",
)
POLLED_GAUGES = ("vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_requests_waiting")


@dataclass(frozen=True)
class Histogram:
    """One Prometheus histogram, summed over label sets.

    Attributes:
        name: e.g. "vllm:time_to_first_token_seconds".
        buckets: columns `le` (upper bound; the last is inf) and `count` (CUMULATIVE: observations <= le).
        sum: the sum of all observations (seconds for latency histograms).
        count: how many observations.
    """

    name: str
    buckets: pd.DataFrame
    sum: float
    count: float

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    def quantile(self, q: float) -> float:
        """Estimate the q-quantile (0..1) as Prometheus' `histogram_quantile` does.

        Why an estimate: a histogram keeps only bucket counts; the value is interpolated
        linearly inside the bucket that holds the q-th observation, so it is only as precise as
        the bucket bounds (compare with the client's exact percentiles knowing that).
        """
        if not self.count:
            return math.nan
        rank = q * self.count
        le, cum = self.buckets["le"].to_numpy(float), self.buckets["count"].to_numpy(float)
        i = int(np.searchsorted(cum, rank))
        if i >= len(le) or math.isinf(le[i]):  # in the +Inf bucket: the last finite bound is all we know
            return float(le[len(le) - 2])
        lower, below = (0.0, 0.0) if i == 0 else (le[i - 1], cum[i - 1])
        in_bucket = cum[i] - below
        return float(lower + (le[i] - lower) * ((rank - below) / in_bucket if in_bucket else 0.0))

    def __sub__(self, before: Histogram) -> Histogram:
        buckets = self.buckets.copy()
        buckets["count"] = self.buckets["count"].to_numpy() - before.buckets["count"].to_numpy()
        return Histogram(self.name, buckets, self.sum - before.sum, self.count - before.count)


@dataclass(frozen=True)
class MetricsSnapshot:
    """Everything numeric /metrics said at one moment, keyed by sample name (`vllm:..._total`).

    Attributes:
        histograms: histogram name -> `Histogram`.
        counters: counter sample name (with `_total`) -> value, summed over labels.
        gauges: gauge name -> value, summed over labels.
        taken_at: `time.time()` when fetched.
    """

    histograms: dict[str, Histogram]
    counters: dict[str, float]
    gauges: dict[str, float]
    taken_at: float = field(default_factory=time.time)


def fetch_metrics_text(base_url: str, api_key: str | None = None, timeout_s: float = 10.0) -> str:
    """`GET {base_url}/metrics` (the server's root URL, not /v1) as text."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    reply = requests.get(f"{base_url.rstrip('/').removesuffix('/v1')}/metrics", headers=headers, timeout=timeout_s)
    reply.raise_for_status()
    return reply.text


def parse_metrics(text: str) -> MetricsSnapshot:
    """Parse Prometheus text into a `MetricsSnapshot` (only `vllm:` metrics are kept)."""
    histograms: dict[str, Histogram] = {}
    counters: dict[str, float] = defaultdict(float)
    gauges: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("vllm:"):
            continue
        if family.type == "histogram":
            bucket_counts: dict[float, float] = defaultdict(float)
            total_sum = total_count = 0.0
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    bucket_counts[float(sample.labels["le"])] += sample.value
                elif sample.name.endswith("_sum"):
                    total_sum += sample.value
                elif sample.name.endswith("_count"):
                    total_count += sample.value
            les = sorted(bucket_counts)
            buckets = pd.DataFrame({"le": les, "count": [bucket_counts[le] for le in les]})
            histograms[family.name] = Histogram(family.name, buckets, total_sum, total_count)
        elif family.type == "counter":
            for sample in family.samples:
                if sample.name.endswith("_total"):  # `_created` samples are timestamps, not counts
                    counters[sample.name] += sample.value
        elif family.type == "gauge":
            for sample in family.samples:
                gauges[sample.name] += sample.value
    return MetricsSnapshot(histograms, dict(counters), dict(gauges))


def snapshot(base_url: str, api_key: str | None = None) -> MetricsSnapshot:
    """Fetch and parse the server's metrics now."""
    return parse_metrics(fetch_metrics_text(base_url, api_key))


@dataclass(frozen=True)
class MetricsDelta:
    """What one run added on the server: `after - before` for every histogram and counter.

    Attributes:
        histograms: name -> the run's own `Histogram`.
        counters: counter name -> increase.
        duration_s: time between the two snapshots.
    """

    histograms: dict[str, Histogram]
    counters: dict[str, float]
    duration_s: float

    @property
    def prefix_cache_hit_rate(self) -> float:
        """Hit tokens / queried tokens during the run (NaN when nothing was queried)."""
        queries = self.counters.get("vllm:prefix_cache_queries_total", 0.0)
        return self.counters.get("vllm:prefix_cache_hits_total", 0.0) / queries if queries else math.nan

    def latency_table(self, quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)) -> pd.DataFrame:
        """One row per latency histogram: count, mean and estimated quantiles, in ms."""
        rows = []
        for name in LATENCY_HISTOGRAMS:
            if (h := self.histograms.get(name)) is not None:
                rows.append({"metric": name, "count": h.count, "mean_ms": h.mean * 1000,
                             **{f"p{int(q * 100)}_ms": h.quantile(q) * 1000 for q in quantiles}})
        return pd.DataFrame(rows)


def delta(before: MetricsSnapshot, after: MetricsSnapshot) -> MetricsDelta:
    """The run between two snapshots (see `MetricsDelta`)."""
    histograms = {name: h - before.histograms[name] for name, h in after.histograms.items()
                  if name in before.histograms}
    counters = {name: value - before.counters.get(name, 0.0) for name, value in after.counters.items()}
    return MetricsDelta(histograms, counters, after.taken_at - before.taken_at)


class MetricsPoller(BackgroundSampler):
    """Samples the server's gauges in a background thread while a benchmark runs.

    Use:
        with MetricsPoller(url) as poller:
            run_benchmark(...)
        poller.df   # t_s, scrape_ms, kv_cache_usage_perc, num_requests_running, num_requests_waiting
    """

    thread_name = "metrics-poller"

    def __init__(self, base_url: str, interval_s: float = 0.1, gauges: tuple[str, ...] = POLLED_GAUGES,
                 api_key: str | None = None) -> None:
        super().__init__(interval_s)
        self.base_url, self.gauges, self.api_key = base_url, gauges, api_key

    def sample(self) -> None:
        sent_s = self.elapsed_s()
        try:
            values = parse_metrics(fetch_metrics_text(self.base_url, self.api_key, timeout_s=5)).gauges
        except requests.RequestException:
            return  # a busy server may miss one sample; keep sampling
        if values:
            # scrape_ms: a starved API server answers late, and the values are from some moment
            # between sending and answering: plot it beside the gauges to see when that happened.
            answered_s = self.elapsed_s()
            self.samples.append({"t_s": answered_s, "scrape_ms": (answered_s - sent_s) * 1000,
                                 **{g.removeprefix("vllm:"): values.get(g, math.nan) for g in self.gauges}})

    @property
    def df(self) -> pd.DataFrame:
        """The samples: `t_s` (seconds since start, when answered), `scrape_ms`, one column per gauge (no `vllm:`)."""
        return pd.DataFrame(self.samples)
