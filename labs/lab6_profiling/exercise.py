"""Lab 6 exercises: turn raw measurements into the numbers a serving team watches.

Fill in each function, then run `make grade LAB=6`. The tests (tests/exercises/test_lab6_profiling.py)
compare your answers with vLLM's own code, not with fixed numbers: `vllm bench serve`'s
`calculate_metrics` on the same synthetic requests, histograms built by `prometheus_client` (the
library vLLM's `/metrics` endpoint uses), and vLLM's KV cache sizing (`FullAttentionSpec`).
"""

from __future__ import annotations

from typing import Any


def request_metrics(start_times: list[float], chunk_times: list[list[float]], output_tokens: list[int],
                    percentiles: tuple[float, ...] = (99,)) -> dict[str, float]:
    """TTFT, TPOT, ITL and end-to-end latency of streamed requests, as `vllm bench serve` reports them.

    A streaming client only sees timestamps: when it sent each request, and when each content
    chunk (an SSE message with a `choices` entry) arrived. From those, per request:
      - TTFT (time to first token) = first chunk - start: queueing + prefill, what a user waits;
      - e2el (end-to-end latency)  = last chunk - start;
      - ITL (inter-token latency)  = the gap between consecutive chunks; every gap of every request
        is one sample (a request with n chunks gives n - 1 samples);
      - TPOT (time per output token) = (e2el - TTFT) / (output_tokens - 1): the decode rate after
        the first token, one value per request. It uses the server's token count (`usage`), not
        the chunk count: one chunk may carry several tokens, so TPOT and ITL differ. A request with
        a single output token has no TPOT sample.
    A request with no chunk at all failed and is left out of every metric. When a metric has no
    sample at all, vLLM reports 0 for it.

    Args:
        start_times: per request, when it was sent (seconds, e.g. time.perf_counter()).
        chunk_times: per request, the arrival time of each content chunk, in order (may be empty).
        output_tokens: per request, the completion tokens the server reported (>= 1 when it succeeded).
        percentiles: which percentiles to report besides the mean and the median, e.g. (90, 99).

    Returns:
        Milliseconds, keyed "<stat>_<metric>_ms" with stat in mean, median, p<P> (P formatted as
        f"{P:g}", e.g. "p99", "p99.9") and metric in ttft, tpot, itl, e2el: "mean_ttft_ms",
        "median_itl_ms", "p99_tpot_ms", ...

    Hint: numpy's `np.mean`, `np.median`, `np.percentile` (its default linear interpolation) are what
    vLLM uses; read `calculate_metrics` in vllm/benchmarks/serve.py after you try.
    """
    raise NotImplementedError("Exercise 1: TTFT / TPOT / ITL / e2el from streamed timestamps")


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The q-quantile of a Prometheus histogram, by PromQL's `histogram_quantile` rule.

    vLLM's `/metrics` does not export raw latencies, only histograms: for
    `vllm:time_to_first_token_seconds` one line per bucket, `..._bucket{le="0.1"} 42` meaning "42
    requests had TTFT <= 0.1 s" (cumulative counts; the last bucket is le="+Inf", every request).
    A dashboard's "p99 TTFT" is an estimate from those buckets:
      1. rank = q * total count; find the first bucket whose cumulative count >= rank;
      2. assume its observations are spread evenly between the previous bucket's bound (0 for the
         first bucket) and its own bound, and interpolate linearly:
         start + (end - start) * (rank - count_before) / (count_in_bucket);
    and the edge cases Prometheus defines:
      - the rank falls in the +Inf bucket: return the highest finite bound (nothing better is known);
      - the first bucket's bound is <= 0 and the rank falls in it: return that bound;
      - no observations, fewer than 2 buckets, or no +Inf bucket: nan;
      - q < 0: -inf; q > 1: +inf; q nan: nan.
    (Prometheus also sorts the buckets, adds the counts of buckets with the same bound, and forces
    the counts to be non-decreasing; do the same.)

    Args:
        buckets: (upper bound `le`, cumulative count) pairs; float("inf") is the +Inf bucket.
        q: the quantile, 0.99 for p99.

    Returns:
        The estimated quantile, in the unit of the bounds (seconds for TTFT).

    Hint: the estimate can only ever be as fine as the buckets; a p99 in a wide bucket is a guess.
    """
    raise NotImplementedError("Exercise 2: a percentile from Prometheus histogram buckets")


def decode_weight_bytes(config: Any, dtype_bytes: int) -> int:
    """Bytes of weights one decode step reads: every parameter of the model, once.

    A decode step runs the whole model for one new token per running request: every weight matrix
    is read from memory once per step, shared by the whole batch. For a Qwen2-style decoder (the
    workbook's tiny-phrasebook model; head_dim = config.head_dim if set, else hidden / heads):
      - embedding: vocab x hidden; the LM head is another vocab x hidden unless
        `config.tie_word_embeddings` (then the one matrix is stored, and read, once);
      - per layer: q_proj (hidden -> heads*head_dim), k_proj and v_proj (hidden -> kv_heads*head_dim),
        each with a bias; o_proj (heads*head_dim -> hidden, no bias); the MLP's gate_proj, up_proj
        (hidden -> intermediate) and down_proj (intermediate -> hidden), no biases; two RMSNorm
        weights of size hidden;
      - a final RMSNorm of size hidden.

    Args:
        config: a Hugging Face config (attributes hidden_size, intermediate_size, num_hidden_layers,
            num_attention_heads, num_key_value_heads, vocab_size, tie_word_embeddings, maybe head_dim).
        dtype_bytes: bytes per weight element (2 for bfloat16).

    Returns:
        The weight bytes (an int).
    """
    raise NotImplementedError("Exercise 3a: weight bytes a decode step reads")


def decode_kv_bytes(config: Any, context_lens: list[int], kv_dtype_bytes: int) -> int:
    """Bytes of KV cache one decode step reads: all cached tokens of every running request.

    Attention for the new token reads the key and the value of every earlier token, in every layer,
    for every KV head (grouped-query attention: KV heads, not query heads). Unlike the weights, this
    is per request: a batch of long contexts reads far more KV cache than weights.

    Args:
        config: a Hugging Face config (as in decode_weight_bytes).
        context_lens: per running request, the tokens in its KV cache that the step reads.
        kv_dtype_bytes: bytes per cached element (2 for a bfloat16 cache, 1 for fp8).
    """
    raise NotImplementedError("Exercise 3b: KV cache bytes a decode step reads")


def decode_roofline(config: Any, context_lens: list[int], dtype_bytes: int, bandwidth_gbps: float,
                    kv_dtype_bytes: int | None = None) -> float:
    """The memory-bound lower bound, in seconds, on one decode step: bytes read / memory bandwidth.

    Decode does little arithmetic per byte (each weight is used for one token per request), so
    a step cannot run faster than the time it takes to stream its bytes from memory: the weights
    once, plus the KV cache of every running request. Measured steps at a fraction of this bound
    show how much time goes elsewhere (Python, scheduling, kernel launches).

    Args:
        config, context_lens: as in decode_weight_bytes / decode_kv_bytes.
        dtype_bytes: bytes per weight element.
        bandwidth_gbps: memory bandwidth in GB/s (1e9 bytes per second).
        kv_dtype_bytes: bytes per cached element; None: the same as dtype_bytes.

    Returns:
        Seconds (a float).
    """
    raise NotImplementedError("Exercise 3c: the decode step's memory roofline")
