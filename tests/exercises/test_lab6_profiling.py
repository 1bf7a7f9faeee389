"""Grades Lab 6's exercises against vLLM's own code and prometheus_client.

- request_metrics: random synthetic streamed requests (chunks that bundle tokens, one-token answers,
  failed requests) through vLLM 0.32.0's own `calculate_metrics` (vllm/benchmarks/serve.py) with
  `RequestFuncOutput`s built as `async_request_openai_completions` fills them;
- histogram_quantile: histograms observed by `prometheus_client` (vLLM's TTFT buckets) and read back
  from the exposition text, against PromQL's rule (promql/quantile.go, BucketQuantile) written out
  here, hand-computed cases, the edge cases, and the raw samples (the estimate stays in the bucket);
- decode bytes: KV bytes against vLLM's `FullAttentionSpec` sizing (`vi.kv_cache_spec_bytes_per_token`),
  weight bytes against the checkpoint's tensors and the Hugging Face model's own parameters; the
  roofline arithmetic against hand-computed cases.
Each check also fails tests/exercises/broken_lab6.py (the "grader catches" tests).

Runs the reference by default; `make grade LAB=6` (LABS_GRADE=learner) runs yours.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labs.core import vllm_internals as vi
from labs.core.grading import load_implementation
from tests.exercises.mirror import assert_learner_mirrors_reference

BROKEN = "tests.exercises.broken_lab6"
PERCENTILES = (50, 90, 99)


@pytest.fixture(scope="module")
def impl() -> Any:
    return load_implementation("lab6_profiling")


# --- 1. request metrics vs vLLM's calculate_metrics ---------------------------------------------


def synthetic_requests(seed: int, n: int) -> tuple[list[float], list[list[float]], list[int]]:
    """Random streamed requests: start times, chunk arrival times, server-reported output tokens."""
    rng = np.random.default_rng(seed)
    starts, chunks, tokens = [], [], []
    for _ in range(n):
        start = float(rng.uniform(0, 5))
        kind = rng.random()
        if kind < 0.1:  # failed: no chunk ever arrived
            times: list[float] = []
        elif kind < 0.25:  # a one-chunk answer
            times = [start + float(rng.exponential(0.3))]
        else:
            first = start + float(rng.exponential(0.3))
            times = list(first + np.cumsum(rng.exponential(0.02, size=int(rng.integers(1, 40)))))
        starts.append(start)
        chunks.append([float(t) for t in times])
        # a chunk may carry several tokens (and a one-chunk answer more than one)
        tokens.append(len(times) + int(rng.integers(0, 4)) * (rng.random() < 0.4) if times else 0)
    return starts, chunks, tokens


def vllm_metrics(starts: list[float], chunks: list[list[float]], tokens: list[int]) -> dict[str, float]:
    """vLLM's own numbers for the same requests, keyed like request_metrics' answer."""
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput
    from vllm.benchmarks.serve import calculate_metrics

    outputs = []
    for start, times, num_tokens in zip(starts, chunks, tokens):
        out = RequestFuncOutput(start_time=start, prompt_len=8)
        if times:  # as async_request_openai_completions fills it, chunk by chunk
            out.success, out.output_tokens = True, num_tokens
            out.ttft = times[0] - start
            out.itl = [b - a for a, b in zip(times, times[1:])]
            out.latency = times[-1] - start
        else:
            out.error = "Never received a valid chunk to calculate TTFT."
        outputs.append(out)
    ends = [s + o.latency for s, o in zip(starts, outputs)]
    metrics, _ = calculate_metrics(input_requests=[], outputs=outputs, dur_s=max(ends) - min(starts) or 1.0,
                                   tokenizer=None, selected_percentiles=list(PERCENTILES), goodput_config_dict={})
    answer = {}
    for name in ("ttft", "tpot", "itl", "e2el"):
        answer[f"mean_{name}_ms"] = getattr(metrics, f"mean_{name}_ms")
        answer[f"median_{name}_ms"] = getattr(metrics, f"median_{name}_ms")
        for p, value in getattr(metrics, f"percentiles_{name}_ms"):
            answer[f"p{p:g}_{name}_ms"] = value
    return answer


def check_request_metrics(impl: Any, seed: int, n: int) -> None:
    starts, chunks, tokens = synthetic_requests(seed, n)
    expected = vllm_metrics(starts, chunks, tokens)
    got = impl.request_metrics(starts, chunks, tokens, PERCENTILES)
    missing = sorted(set(expected) - set(got))
    assert not missing, f"request_metrics must also report {missing}"
    for key, value in expected.items():
        metric = key.split("_")[1].upper()
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), \
            f"{metric} differs from vLLM's calculate_metrics: {key} = {got[key]!r}, vLLM says {value!r} " \
            f"({n} requests, seed {seed})"


@pytest.mark.parametrize("seed,n", [(0, 1), (1, 5), (2, 40), (3, 200)])
def test_request_metrics_match_vllm_bench(impl: Any, seed: int, n: int, capsys: Any) -> None:
    check_request_metrics(impl, seed, n)


def test_request_metrics_with_no_samples_are_zero_as_vllm_reports(impl: Any, capsys: Any) -> None:
    """One-token answers only (no TPOT, no ITL sample), then every request failed."""
    starts, chunks, tokens = [0.0, 1.0], [[0.25], [1.5]], [1, 1]
    expected, got = vllm_metrics(starts, chunks, tokens), impl.request_metrics(starts, chunks, tokens, PERCENTILES)
    for key in ("mean_tpot_ms", "p99_tpot_ms", "median_itl_ms", "mean_ttft_ms", "p90_e2el_ms"):
        assert got[key] == pytest.approx(expected[key]), f"{key}: {got[key]!r}, vLLM says {expected[key]!r}"
    got = impl.request_metrics([0.0], [[]], [0], PERCENTILES)
    assert got["mean_ttft_ms"] == 0 and got["p99_itl_ms"] == 0, "a failed request must not count"


def test_grader_catches_wrong_tpot(capsys: Any) -> None:
    with pytest.raises(AssertionError, match="TPOT differs from vLLM's calculate_metrics"):
        check_request_metrics(load_implementation("lab6_profiling", BROKEN), 2, 40)


# --- 2. a quantile from a Prometheus histogram ------------------------------------------------


def prometheus_bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """PromQL's BucketQuantile (prometheus/promql/quantile.go), line by line."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets = sorted(buckets)
    if not buckets or not math.isinf(buckets[-1][0]):
        return math.nan
    coalesced: list[list[float]] = []  # coalesceBuckets
    for upper, count in buckets:
        if coalesced and coalesced[-1][0] == upper:
            coalesced[-1][1] += count
        else:
            coalesced.append([upper, count])
    for i in range(1, len(coalesced)):  # ensureMonotonic
        coalesced[i][1] = max(coalesced[i][1], coalesced[i - 1][1])
    if len(coalesced) < 2:
        return math.nan
    observations = coalesced[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = len(coalesced) - 1  # sort.Search(len(buckets)-1, count >= rank)
    for i in range(len(coalesced) - 1):
        if coalesced[i][1] >= rank:
            b = i
            break
    if b == len(coalesced) - 1:
        return coalesced[-2][0]
    if b == 0 and coalesced[0][0] <= 0:
        return coalesced[0][0]
    bucket_start, bucket_end, count = 0.0, coalesced[b][0], coalesced[b][1]
    if b > 0:
        bucket_start = coalesced[b - 1][0]
        count -= coalesced[b - 1][1]
        rank -= coalesced[b - 1][1]
    return bucket_start + (bucket_end - bucket_start) * (rank / count)


def observed_buckets(samples: list[float], bounds: list[float]) -> list[tuple[float, float]]:
    """Observe `samples` in a prometheus_client Histogram; the (le, count) pairs `/metrics` exposes."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry()
    histogram = Histogram("lab6_time_to_first_token_seconds", "TTFT", buckets=bounds, registry=registry)
    for s in samples:
        histogram.observe(s)
    text = generate_latest(registry).decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "lab6_time_to_first_token_seconds"]
    return [(float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")]


def vllm_ttft_bounds() -> list[float]:
    from vllm.v1.metrics.buckets import histogram_buckets

    return histogram_buckets("time_to_first_token")


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-15)


def check_histogram_quantile(impl: Any) -> None:
    bounds = vllm_ttft_bounds()
    rng = np.random.default_rng(6)
    for scale in (0.01, 0.2, 3.0):
        samples = [float(x) for x in rng.lognormal(math.log(scale), 0.8, size=500)]
        buckets = observed_buckets(samples, bounds)
        for q in (0.1, 0.5, 0.9, 0.95, 0.99, 1.0):
            expected, got = prometheus_bucket_quantile(q, buckets), impl.histogram_quantile(buckets, q)
            assert same(got, expected), \
                f"p{100 * q:g} of vLLM's TTFT buckets: {got!r}, Prometheus' linear interpolation gives {expected!r}"
            # the estimate stays inside the bucket that holds the true quantile (not in +Inf)
            true = float(np.quantile(samples, q, method="inverted_cdf"))
            upper = next(b for b in bounds + [math.inf] if true <= b)
            lower = max([0.0] + [b for b in bounds if b < true])
            if not math.isinf(upper):
                assert lower <= got <= upper, f"p{100 * q:g} = {got!r} is outside its bucket ({lower}, {upper}]"


def test_histogram_quantile_matches_prometheus(impl: Any) -> None:
    check_histogram_quantile(impl)


def test_histogram_quantile_by_hand(impl: Any) -> None:
    # 10 requests: 2 under 0.1 s, 6 more under 0.5 s, 2 more under 1 s
    buckets = [(0.1, 2), (0.5, 8), (1.0, 10), (math.inf, 10)]
    assert impl.histogram_quantile(buckets, 0.5) == pytest.approx(0.1 + 0.4 * 3 / 6), "rank 5: 3 of 6 into (0.1, 0.5]"
    assert impl.histogram_quantile(buckets, 0.1) == pytest.approx(0.05), "rank 1: halfway through (0, 0.1]"
    assert impl.histogram_quantile(buckets, 0.8) == pytest.approx(0.5), "rank 8 is exactly the 0.5 bucket's count"
    assert impl.histogram_quantile(buckets, 0.95) == pytest.approx(0.875), "rank 9.5: 1.5 of 2 into (0.5, 1]"
    assert impl.histogram_quantile(list(reversed(buckets)), 0.5) == pytest.approx(0.3), "buckets in any order"


def test_histogram_quantile_edge_cases(impl: Any) -> None:
    bounds = vllm_ttft_bounds()
    slow = observed_buckets([0.05] * 90 + [5000.0] * 10, bounds)
    assert impl.histogram_quantile(slow, 0.99) == bounds[-1], \
        "q in the +Inf bucket: Prometheus returns the highest finite bound"
    empty = observed_buckets([], bounds)
    assert math.isnan(impl.histogram_quantile(empty, 0.5)), "an empty histogram has no quantile: nan"
    assert math.isnan(impl.histogram_quantile([(0.1, 3), (1.0, 5)], 0.5)), "no +Inf bucket: nan"
    assert math.isnan(impl.histogram_quantile([(math.inf, 5)], 0.5)), "fewer than 2 buckets: nan"
    assert impl.histogram_quantile(slow, 1.5) == math.inf and impl.histogram_quantile(slow, -0.1) == -math.inf
    assert math.isnan(impl.histogram_quantile(slow, math.nan))
    assert impl.histogram_quantile([(-1.0, 4), (1.0, 8), (math.inf, 8)], 0.25) == -1.0, \
        "a first bound <= 0: Prometheus returns it (no natural lower bound of 0)"
    # two series with the same `le` (e.g. two engines) add up; a non-monotonic count is forced up
    merged = [(0.1, 1), (0.1, 1), (1.0, 3), (1.0, 1), (math.inf, 4)]
    assert same(impl.histogram_quantile(merged, 0.75), prometheus_bucket_quantile(0.75, merged))
    bumpy = [(0.1, 4), (0.5, 3), (1.0, 8), (math.inf, 8)]
    assert same(impl.histogram_quantile(bumpy, 0.25), prometheus_bucket_quantile(0.25, bumpy))


def test_grader_catches_a_missing_interpolation() -> None:
    with pytest.raises(AssertionError, match="Prometheus' linear interpolation gives"):
        check_histogram_quantile(load_implementation("lab6_profiling", BROKEN))


# --- 3. the decode roofline --------------------------------------------------------------------


def qwen2_configs(model_path: Path) -> list[Any]:
    from transformers import AutoConfig, Qwen2Config

    return [
        AutoConfig.from_pretrained(model_path),  # the workbook's tiny-phrasebook (tied embeddings)
        Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                    num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),  # Qwen2.5-0.5B-shaped
        Qwen2Config(hidden_size=512, intermediate_size=1376, num_hidden_layers=3, num_attention_heads=8,
                    num_key_value_heads=8, vocab_size=1000, tie_word_embeddings=False),  # MHA, untied head
    ]


def hf_num_params(config: Any) -> int:
    """What Hugging Face builds for the config (on the meta device: no memory), shared tensors once."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def checkpoint_numel(model_path: Path) -> int:
    """The checkpoint's tensor sizes (what vi.model_weight_bytes counts for a live engine)."""
    from safetensors import safe_open

    numel = 0
    for path in sorted(model_path.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            numel += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return numel


def check_weight_bytes(impl: Any, model_path: Path) -> None:
    tiny, *others = qwen2_configs(model_path)
    assert impl.decode_weight_bytes(tiny, 2) == 2 * checkpoint_numel(model_path), \
        "weight bytes: tiny-phrasebook's checkpoint holds a different number of bytes"
    for config in [tiny, *others]:
        for dtype_bytes in (2, 4):
            expected = hf_num_params(config) * dtype_bytes
            got = impl.decode_weight_bytes(config, dtype_bytes)
            assert got == expected, \
                f"weight bytes: you counted {got}, the model really holds {expected} " \
                f"(hidden {config.hidden_size}, {config.num_hidden_layers} layers, tied {config.tie_word_embeddings})"


def check_kv_bytes(impl: Any, model_path: Path) -> None:
    import torch

    for config in qwen2_configs(model_path):
        head_dim = config.hidden_size // config.num_attention_heads
        for kv_cache_dtype, model_dtype, nbytes in (("auto", torch.bfloat16, 2), ("auto", torch.float32, 4),
                                                    ("fp8", torch.bfloat16, 1)):
            per_token = vi.kv_cache_spec_bytes_per_token(config.num_hidden_layers, config.num_key_value_heads,
                                                         head_dim, kv_cache_dtype, model_dtype)
            for context_lens in ([1], [17, 300, 5], [4096] * 8):
                got = impl.decode_kv_bytes(config, context_lens, nbytes)
                assert got == per_token * sum(context_lens), \
                    f"KV bytes for contexts {context_lens}: you counted {got}, vLLM allocates " \
                    f"{per_token} bytes per token ({kv_cache_dtype} cache, {model_dtype})"


def test_decode_weight_bytes(impl: Any, model_path: Path) -> None:
    check_weight_bytes(impl, model_path)


def test_decode_kv_bytes_match_vllm_sizing(impl: Any, model_path: Path) -> None:
    check_kv_bytes(impl, model_path)


def check_roofline_by_hand(impl: Any, model_path: Path) -> None:
    tiny = qwen2_configs(model_path)[0]
    # 4 layers x (q 65,792 + k 32,896 + v 32,896 + o 65,536 + MLP 589,824 + norms 512) + embedding
    # 1,048,576 (tied) + final norm 256 = 4,198,656 params = 8,397,312 bf16 bytes; KV: 4 layers x
    # (K, V) x 2 heads x 64 x 2 bytes = 2,048 bytes/token, 30 tokens = 61,440 bytes.
    for context_lens, kv_bytes, bandwidth, expected in (([10, 20], None, 100.0, 8_458_752 / 100e9),
                                                        ([10, 20], 1, 100.0, 8_428_032 / 100e9),
                                                        ([], None, 8.0, 8_397_312 / 8e9),
                                                        ([1000] * 64, None, 20.0, (8_397_312 + 2048 * 64_000) / 20e9)):
        got = impl.decode_roofline(tiny, context_lens, 2, bandwidth, kv_bytes)
        assert got == pytest.approx(expected, rel=1e-12), \
            f"roofline of tiny-phrasebook, contexts {context_lens[:3]}..., {bandwidth} GB/s: you say {got!r} s, " \
            f"by hand {expected!r} s"


def test_decode_roofline_by_hand(impl: Any, model_path: Path) -> None:
    check_roofline_by_hand(impl, model_path)


def test_grader_catches_wrong_decode_bytes(model_path: Path) -> None:
    broken = load_implementation("lab6_profiling", BROKEN)
    with pytest.raises(AssertionError, match="weight bytes: tiny-phrasebook's checkpoint holds"):
        check_weight_bytes(broken, model_path)
    with pytest.raises(AssertionError, match="vLLM allocates"):
        check_kv_bytes(broken, model_path)
    with pytest.raises(AssertionError, match="by hand"):
        check_roofline_by_hand(broken, model_path)


@pytest.mark.engine
def test_decode_bytes_match_the_live_engine(impl: Any, llm: Any) -> None:
    """The same answers as vLLM's own sizing of the running engine (weights and KV cache per token)."""
    import torch

    model_config = llm.llm_engine.model_config
    dtype_bytes = torch.empty((), dtype=model_config.dtype).element_size()
    kv_dtype_bytes = vi.kv_cache_tensors(llm)[0].element_size()
    assert impl.decode_weight_bytes(model_config.hf_config, dtype_bytes) == vi.model_weight_bytes(llm), \
        "weight bytes differ from the engine's"
    assert impl.decode_kv_bytes(model_config.hf_config, [1], kv_dtype_bytes) == vi.kv_cache_bytes_per_token(llm), \
        "KV bytes per token differ from the engine's KV cache spec"


def test_learner_file_mirrors_the_reference() -> None:
    assert_learner_mirrors_reference("lab6_profiling", {"request_metrics", "histogram_quantile", "decode_roofline"})
