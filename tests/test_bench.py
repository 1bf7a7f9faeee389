"""The benchmark harness (`labs.core.bench`) against one real vLLM server, and against vLLM's own benchmark.

The session's shared server (`vllm_server` in tests/conftest.py: tiny-phrasebook, its own port and
log folder, an API key); run-level checks read the server's counters as a delta around each run,
so requests other tests sent earlier do not count. The truths are vLLM's, never ours: the
server's token counters, vLLM's `calculate_metrics` fed our raw timings, and the JSON that vLLM's
own serving benchmark saves against the same server with the same prompts.

Cross-check bounds: both tools measure the same server one after the other, one request at a
time. The test asserts only what the machine's load cannot change: both tools count the same
tokens in every run, and each tool's rates are its counts over its own run's duration, which its
requests' latencies together cannot exceed. How close the two tools' figures come is a speed
figure, and speed figures are printed by the benchmark script, not asserted by a unit test: on a
2-core machine the two clients share the cores with the server, and vLLM's client does more per
chunk, so its figures differ from ours by an amount that depends on the machine and its load.
`python -m labs.core.bench.crosscheck` prints that table with its 10% verdict, and its
`crosscheck` docstring states the spread measured between sessions. That the definitions are
vLLM's is checked exactly, without noise, by `test_summary_equals_vllm_calculate_metrics`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from labs.core import bench
from labs.core.bench.client import sse_messages
from labs.core.bench.crosscheck import crosscheck
from labs.core.bench.monitor import COLUMNS
from labs.core.serve import OwnedServer, status

from .conftest import REPO_ROOT, TEST_MODEL

@dataclass
class Server:
    url: str
    log_dir: Path
    api_key: str

    def run(self, **options: object) -> bench.BenchmarkResult:
        return bench.run_benchmark(base_url=self.url, api_key=self.api_key, disable_tqdm=True, **options)


@pytest.fixture(scope="module")
def server(vllm_server: OwnedServer) -> Server:
    """The shared server, which requires its API key: every request of the harness must send it."""
    assert vllm_server.log_dir is not None and vllm_server.api_key
    return Server(vllm_server.url, vllm_server.log_dir, vllm_server.api_key)


def settled_delta(server: Server, before: bench.MetricsSnapshot, num_requests: int,
                  timeout_s: float = 10.0) -> bench.MetricsDelta:
    """The run's server-side delta once the server has recorded all `num_requests` as finished.

    Why wait: the server records a request's statistics when it processes its final output,
    which can come a moment after the client has read the last streamed chunk.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        run = bench.delta(before, bench.snapshot(server.url, server.api_key))
        if run.counters.get("vllm:request_success_total", 0) >= num_requests or time.monotonic() > deadline:
            return run
        time.sleep(0.1)


# --- no server needed ------------------------------------------------------------------------


def test_arrival_schedule_follows_vllm() -> None:
    assert not bench.arrival_offsets(5, math.inf).any(), "rate=inf sends everything at once"
    even = bench.arrival_offsets(4, 2.0, burstiness=math.inf)
    assert np.allclose(even, [0.5, 1.0, 1.5, 2.0])
    for burstiness in (0.5, 1.0, 4.0):  # rescaled: the last send is always at n / rate
        offsets = bench.arrival_offsets(50, 10.0, burstiness, seed=3)
        assert offsets[-1] == pytest.approx(5.0) and (np.diff(offsets) >= 0).all()
    bursty, regular = (np.diff(bench.arrival_offsets(2000, 10.0, b, seed=1)) for b in (0.25, 8.0))
    assert bursty.std() > 3 * regular.std(), "low burstiness must give more irregular gaps"


def test_sampler_records_both_edges_however_short_the_run() -> None:
    """A starved server may answer one scrape per run: start and end must be in the series anyway."""
    from labs.core.bench.sampling import BackgroundSampler

    class Counter(BackgroundSampler):
        def sample(self) -> None:
            self.samples.append({"t_s": self.elapsed_s()})

    sampler = Counter(interval_s=60.0)  # no periodic sample can happen during this test
    with sampler:
        time.sleep(0.2)
    t_s = [row["t_s"] for row in sampler.samples]
    assert len(t_s) == 2 and t_s[0] < t_s[1] and t_s[1] >= 0.2, t_s  # interval 60 s: the first is the start's
    sampler.stop()  # a second stop adds nothing
    assert len(sampler.samples) == 2


def test_goodput_and_sse_parsing() -> None:
    assert bench.parse_goodput(["ttft:500", "tpot:50.5"]) == {"ttft": 500.0, "tpot": 50.5}
    with pytest.raises(ValueError):
        bench.parse_goodput(["itl:5"])  # vLLM accepts ttft, tpot, e2el only
    messages, rest = sse_messages('data: {"a": 1}\n\n: ping\n\ndata: {"b"')
    assert messages == ['data: {"a": 1}', ": ping"] and rest == 'data: {"b"'


# --- one real server ---------------------------------------------------------------------------


@pytest.mark.server
@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_run_completes_with_sane_numbers_and_server_token_counts(server: Server, endpoint: str) -> None:
    # A chat stream opens with a role-only chunk, which vLLM's benchmark counts as the first token.
    expected_itl = 10 if endpoint == "chat" else 9
    for attempt in range(1, 4):
        before = bench.snapshot(server.url, server.api_key)
        result = server.run(endpoint=endpoint, num_prompts=6, input_len=24, output_len=10, request_rate=50)
        run = settled_delta(server, before, 6 + 1)  # + the warm-up request
        df, summary = result.df, result.summary
        assert summary["completed"] == 6 and summary["failed"] == 0, df["error"].tolist()
        assert (df["output_len"] == 10).all(), "ignore_eos: exactly max_tokens per request"
        # One gap per chunk, never more: a starved API server sends several tokens in one chunk (the
        # 2-core case in README's troubleshooting), and then a run is repeated, not judged.
        assert ((df["num_itl"] >= 1) & (df["num_itl"] <= expected_itl)).all(), df["num_itl"].tolist()
        if (df["num_itl"] == expected_itl).all():
            break
    else:
        pytest.skip(f"tokens were sent several per chunk in 3 runs (load average {os.getloadavg()[0]:.1f} on "
                    f"{os.cpu_count()} cores): this machine is too busy to check one chunk per token")
    assert ((df["ttft_ms"] > 0) & (df["ttft_ms"] <= df["e2el_ms"])).all()
    assert np.allclose(df["tpot_ms"], (df["e2el_ms"] - df["ttft_ms"]) / 9)
    # The server's own counters are the truth for token counts (the warm-up request included).
    warm_prompt = result.outputs[0].prompt_len
    assert run.counters["vllm:generation_tokens_total"] == summary["total_output_tokens"] + 10
    assert run.counters["vllm:prompt_tokens_total"] == summary["total_input_tokens"] + warm_prompt
    assert summary["output_throughput"] == pytest.approx(60 / summary["duration"])


@pytest.mark.server
def test_summary_equals_vllm_calculate_metrics(server: Server) -> None:
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput
    from vllm.benchmarks.serve import calculate_metrics

    result = server.run(num_prompts=10, input_len=16, output_len=8, request_rate=40, burstiness=0.5,
                        max_concurrency=3, range_ratio=0.5, ignore_eos=False)
    slos = {"ttft": float(np.median(result.df["ttft_ms"])), "tpot": 1000.0}  # about half the requests are good
    ours = bench.summarize(result.outputs, result.summary["duration"], percentiles=(50, 90, 99), goodput_slos_ms=slos)
    outputs = [RequestFuncOutput(generated_text=o.generated_text, success=o.success, latency=o.latency,
                                 output_tokens=o.output_tokens, ttft=o.ttft, itl=list(o.itl), prompt_len=o.prompt_len,
                                 start_time=o.start_time) for o in result.outputs]
    theirs, _ = calculate_metrics([], outputs, result.summary["duration"], None, [50, 90, 99], slos)
    assert 0 < theirs.request_goodput < theirs.request_throughput
    for key in ("completed", "failed", "total_input", "total_output", "request_throughput", "request_goodput",
                "output_throughput", "total_token_throughput", "max_output_tokens_per_s", "max_concurrent_requests"):
        our_key = {"total_input": "total_input_tokens", "total_output": "total_output_tokens"}.get(key, key)
        assert ours[our_key] == pytest.approx(getattr(theirs, key)), key
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std"):
            assert ours[f"{stat}_{metric}_ms"] == pytest.approx(getattr(theirs, f"{stat}_{metric}_ms")), (stat, metric)
        for p, value in getattr(theirs, f"percentiles_{metric}_ms"):
            assert ours[f"p{int(p)}_{metric}_ms"] == pytest.approx(value), (p, metric)


@pytest.mark.server
def test_metrics_poller_and_monitor_during_a_run(server: Server) -> None:
    before = bench.snapshot(server.url, server.api_key)
    result = server.run(num_prompts=24, input_len=32, output_len=32, max_concurrency=4)
    run = settled_delta(server, before, 24 + 1)
    for name in ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                 "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds",
                 "vllm:request_prefill_time_seconds", "vllm:request_decode_time_seconds"):
        histogram = run.histograms[name]
        assert histogram.count == 25 or name == "vllm:inter_token_latency_seconds", name  # 24 + the warm-up
        assert histogram.buckets["count"].iloc[-1] == histogram.count and histogram.sum > 0
    assert run.histograms["vllm:inter_token_latency_seconds"].count == 25 * 31
    for name in ("vllm:prefix_cache_queries_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
        assert run.counters[name] > 0, name
    assert len(run.latency_table()) >= 6
    # The server's TTFT (inside vLLM) cannot exceed what the client saw (which adds HTTP and network).
    assert run.histograms["vllm:time_to_first_token_seconds"].mean * 1000 <= result.summary["mean_ttft_ms"] * 1.05

    # The pollers, over one wave of 4 long requests. Why one wave: requests of equal length run in
    # waves with 0 running between them, and on 2 cores the API server (sharing a core with the
    # engine core's busy loop and this client) answers scrapes mostly in those gaps.
    server_status = status(server.url, log_dir=server.log_dir, api_key=server.api_key)
    with bench.MetricsPoller(server.url, interval_s=0.05, api_key=server.api_key) as poller, \
            bench.monitor(server_status, interval_s=0.1) as mon:
        wave = server.run(num_prompts=4, input_len=32, output_len=768, max_concurrency=4, num_warmups=0)
    samples = poller.df
    assert len(samples) >= 2 and samples["t_s"].is_monotonic_increasing and (samples["scrape_ms"] > 0).all()
    assert {"kv_cache_usage_perc", "num_requests_running", "num_requests_waiting"} <= set(samples.columns)
    assert samples["kv_cache_usage_perc"].between(0, 1).all() and (samples["num_requests_waiting"] >= 0).all()
    # A scrape sent after a first token arrived and answered before any request was half-way through
    # its decode (as the client saw it) read the engine while all 4 were running. A starved API
    # server may answer none in that window (a scrape can take longer than the window; the test prints
    # the slowest scrape's time): then nothing to check.
    t0 = poller._t0
    first_token_s = min(o.start_time + o.ttft for o in wave.outputs) - t0
    half_decoded_s = min(o.start_time + (o.ttft + o.latency) / 2 for o in wave.outputs) - t0
    sent_s = samples["t_s"] - samples["scrape_ms"] / 1000
    mid_run = samples[(sent_s > first_token_s) & (samples["t_s"] < half_decoded_s)]
    print(f"{len(samples)} scrapes, {len(mid_run)} inside the wave; slowest answered in {samples['scrape_ms'].max():.0f} ms")
    if len(mid_run):
        assert (mid_run["num_requests_running"] >= 1).all() and (mid_run["kv_cache_usage_perc"] > 0).all(), \
            (first_token_s, half_decoded_s, samples.to_string())
    usage = mon.df
    assert list(usage.columns) == list(COLUMNS) and len(usage) >= 2
    assert (usage["num_processes"] >= 2).all(), "the API server and its engine core are separate processes"
    assert usage["rss_mib"].min() > 100 and usage["cpu_percent"].max() > 0
    assert set(usage["backend"]) == {"gpu" if mon.use_gpu else "cpu"}


@pytest.mark.server
def test_plots_from_real_runs(server: Server) -> None:
    import matplotlib

    matplotlib.use("Agg")
    before = bench.snapshot(server.url, server.api_key)
    result = server.run(num_prompts=6, output_len=8)
    run = settled_delta(server, before, 6 + 1)
    sweep = bench.sweep_request_rates([20.0, math.inf], base_url=server.url, api_key=server.api_key, num_prompts=4,
                                      output_len=8, disable_tqdm=True)
    assert list(sweep["request_rate"]) == [20.0, math.inf] and (sweep["completed"] == 4).all()
    figures = [bench.plot_latency_cdfs({"a": result, "b": result.df}), bench.plot_latency_vs_rate(sweep),
               bench.plot_throughput_vs_latency(sweep), bench.plot_server_vs_client(run.histograms, result)]
    assert all(fig.axes and fig.axes[0].has_data() for fig in figures)


@pytest.mark.server
def test_cli_prints_vllm_table_and_saves_json(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, "-m", "labs.core.bench", "--base-url", f"{server.url}/v1", "--endpoint", "chat",
                           "--num-prompts", "4", "--output-len", "6", "--request-rate", "20", "--goodput", "ttft:60000",
                           "--save-result", str(out), "--disable-tqdm"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "VLLM_API_KEY": server.api_key})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Serving Benchmark Result" in done.stdout and "Median TPOT (ms):" in done.stdout
    saved = json.loads(out.read_text())
    assert saved["completed"] == 4 and saved["request_goodput"] == pytest.approx(saved["request_throughput"])


@pytest.mark.server
def test_crosscheck_against_vllm_bench_serve(server: Server, tmp_path: Path) -> None:
    check = crosscheck(server.url, num_prompts=16, input_len=32, output_len=24, max_concurrency=1, repeats=2,
                       tokenizer=None, work_dir=tmp_path, echo=lambda _: None, api_key=server.api_key, max_attempts=2)
    print("\n" + check.table.to_string(index=False))
    print(f"all within 10%: {check.all_agree}; disturbed runs repeated: {check.num_disturbed_runs}")
    # Our JSON has every key vLLM's benchmark saves (read from the file its module wrote).
    vllm_keys = set(json.loads(check.vllm_result_paths[0].read_text()))
    ours = bench.BenchmarkResult(bench.BenchmarkConfig(model=TEST_MODEL, max_concurrency=1), [], [],
                                 check.ours[0]).to_json(detailed=False)
    assert vllm_keys <= set(ours), f"missing: {sorted(vllm_keys - set(ours))}"
    assert all(run["completed"] == 16 and run["failed"] == 0 for run in check.vllm)
    # Token counts do not depend on the machine's load: both tools must count the same, in every run.
    counts = {(run["total_input_tokens"], run["total_output_tokens"]) for run in [*check.ours, *check.vllm]}
    assert len(counts) == 1 and next(iter(counts))[1] == 16 * 24, f"(input, output) tokens per run: {counts}"
    # What ties each tool's throughput to its latencies, whatever the load: one request at a time, so the
    # run lasts at least as long as its requests together, and every rate is a count over that duration.
    for who, runs in (("ours", check.ours), ("vllm", check.vllm)):
        for run in runs:
            duration_s = run["duration"]
            assert run["mean_e2el_ms"] * run["completed"] / 1000 <= duration_s * 1.001, (who, run)
            assert run["request_throughput"] == pytest.approx(run["completed"] / duration_s, rel=1e-6), (who, run)
            assert run["output_throughput"] == pytest.approx(run["total_output_tokens"] / duration_s, rel=1e-6), who
            assert 0 < run["median_ttft_ms"] <= run["median_e2el_ms"], (who, run)
    # How close the two tools' latencies come depends on the machine's load (make test shares 2 cores
    # between two workers): that comparison is a benchmark, `python -m labs.core.bench.crosscheck`,
    # run on an idle machine; here it is printed, not judged.
