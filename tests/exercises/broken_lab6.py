"""A deliberately wrong Lab 6 implementation: the grader must fail it (see test_lab6_profiling.py)."""

from __future__ import annotations

import math
from typing import Any

from labs.lab6_profiling import solution as reference


def request_metrics(start_times: list[float], chunk_times: list[list[float]], output_tokens: list[int],
                    percentiles: tuple[float, ...] = (99,)) -> dict[str, float]:
    # Classic mistake: TPOT divided by all output tokens, forgetting the first one came at TTFT.
    out = reference.request_metrics(start_times, chunk_times, output_tokens, percentiles)
    tpots = [(c[-1] - c[0]) / n for s, c, n in zip(start_times, chunk_times, output_tokens) if c and n > 1]
    out.update(reference._stats(tpots, "tpot", percentiles))
    return out


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    # Classic mistake: the bucket's upper bound, no interpolation inside the bucket.
    bounds = sorted(buckets)
    total = bounds[-1][1] if bounds else 0
    if not total:
        return math.nan
    for i, (upper, count) in enumerate(bounds):
        if count >= q * total:
            return upper if not math.isinf(upper) else bounds[i - 1][0]
    return math.nan


def decode_weight_bytes(config: Any, dtype_bytes: int) -> int:
    # Classic mistake: counts the LM head even when it is tied to the embedding.
    extra = config.vocab_size * config.hidden_size * dtype_bytes if config.tie_word_embeddings else 0
    return reference.decode_weight_bytes(config, dtype_bytes) + extra


def decode_kv_bytes(config: Any, context_lens: list[int], kv_dtype_bytes: int) -> int:
    return reference.decode_kv_bytes(config, context_lens, kv_dtype_bytes) // 2  # forgets V beside K


def decode_roofline(config: Any, context_lens: list[int], dtype_bytes: int, bandwidth_gbps: float,
                    kv_dtype_bytes: int | None = None) -> float:
    # Classic mistake: GB/s read as 2**30 bytes/s.
    kv = decode_kv_bytes(config, context_lens, dtype_bytes if kv_dtype_bytes is None else kv_dtype_bytes)
    return (decode_weight_bytes(config, dtype_bytes) + kv) / (bandwidth_gbps * 2**30)
