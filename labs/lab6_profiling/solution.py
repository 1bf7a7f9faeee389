"""Lab 6 reference solution: latency metrics from raw timestamps, a Prometheus histogram quantile,
and the decode roofline. Graded by tests/exercises/test_lab6_profiling.py (against vLLM's own
benchmark code, prometheus_client histograms and vLLM's KV cache sizing).
"""

from __future__ import annotations

import math
from itertools import accumulate
from typing import Any

import numpy as np

METRICS = ("ttft", "tpot", "itl", "e2el")


def _stats(values: list[float], name: str, percentiles: tuple[float, ...]) -> dict[str, float]:
    """mean / median / p<p> of `values` (seconds) in ms; no values gives 0.0, as vLLM reports."""
    data = values or [0.0]
    out = {f"mean_{name}_ms": float(np.mean(data)) * 1000, f"median_{name}_ms": float(np.median(data)) * 1000}
    for p in percentiles:
        out[f"p{p:g}_{name}_ms"] = float(np.percentile(data, p)) * 1000
    return out


def request_metrics(start_times: list[float], chunk_times: list[list[float]], output_tokens: list[int],
                    percentiles: tuple[float, ...] = (99,)) -> dict[str, float]:
    """TTFT, TPOT, ITL and end-to-end latency of streamed requests, as `vllm bench serve` reports them."""
    ttfts: list[float] = []
    tpots: list[float] = []
    itls: list[float] = []
    e2els: list[float] = []
    for start, chunks, num_tokens in zip(start_times, chunk_times, output_tokens):
        if not chunks:  # no chunk ever arrived: a failed request, left out of every metric
            continue
        ttft, latency = chunks[0] - start, chunks[-1] - start
        ttfts.append(ttft)
        e2els.append(latency)
        itls.extend(b - a for a, b in zip(chunks, chunks[1:]))
        if num_tokens > 1:  # a one-token answer has no "per output token" time after the first
            tpots.append((latency - ttft) / (num_tokens - 1))
    out: dict[str, float] = {}
    for name, values in zip(METRICS, (ttfts, tpots, itls, e2els)):
        out.update(_stats(values, name, percentiles))
    return out


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The q-quantile of a classic Prometheus histogram, as PromQL's histogram_quantile computes it."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: dict[float, float] = {}
    for upper, count in buckets:  # the same `le` twice (e.g. from two series): add the counts
        merged[float(upper)] = merged.get(float(upper), 0.0) + float(count)
    bounds = sorted(merged)
    if not bounds or not math.isinf(bounds[-1]) or len(bounds) < 2:
        return math.nan
    counts = list(accumulate((merged[b] for b in bounds), max))  # force monotonic counts
    observations = counts[-1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(bounds) - 1) if counts[i] >= rank), len(bounds) - 1)
    if b == len(bounds) - 1:  # in the +Inf bucket: the highest finite bound is all we know
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[b], counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * (rank / count)


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def decode_weight_bytes(config: Any, dtype_bytes: int) -> int:
    """Bytes of weights a decode step reads: every parameter of a Qwen2-style decoder, once."""
    hidden, head_dim = config.hidden_size, _head_dim(config)
    q_out, kv_out = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    attention = hidden * q_out + q_out + 2 * (hidden * kv_out + kv_out) + q_out * hidden  # q,k,v with bias; o
    mlp = 3 * hidden * config.intermediate_size  # gate, up, down
    per_layer = attention + mlp + 2 * hidden  # + input and post-attention RMSNorm
    embedding = config.vocab_size * hidden
    lm_head = 0 if config.tie_word_embeddings else embedding
    return (embedding + config.num_hidden_layers * per_layer + hidden + lm_head) * dtype_bytes


def decode_kv_bytes(config: Any, context_lens: list[int], kv_dtype_bytes: int) -> int:
    """Bytes of KV cache a decode step reads: K and V of every layer for every cached token of the batch."""
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * _head_dim(config) * kv_dtype_bytes
    return per_token * sum(context_lens)


def decode_roofline(config: Any, context_lens: list[int], dtype_bytes: int, bandwidth_gbps: float,
                    kv_dtype_bytes: int | None = None) -> float:
    """Memory-bound lower bound, in seconds, on one decode step of the running batch."""
    kv_bytes = decode_kv_bytes(config, context_lens, dtype_bytes if kv_dtype_bytes is None else kv_dtype_bytes)
    return (decode_weight_bytes(config, dtype_bytes) + kv_bytes) / (bandwidth_gbps * 1e9)
