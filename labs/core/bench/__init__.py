"""Benchmark an OpenAI-compatible server: TTFT, TPOT, ITL, E2EL and throughput, as `vllm bench serve` defines them.

From a notebook:

    from labs.core import bench
    result = bench.run_benchmark(num_prompts=20, request_rate=4, endpoint="chat", goodput=["ttft:500"])
    result.df                      # one row per request (ttft_ms, tpot_ms, e2el_ms, itl_ms, ...)
    result.summary                 # vLLM's keys: median_ttft_ms, p99_tpot_ms, request_throughput, ...
    bench.plot_latency_cdfs(result)

With the server's own view and resource use:

    before = bench.snapshot(url)
    with bench.MetricsPoller(url) as poller, bench.monitor(serve.status(url)) as mon:
        result = bench.run_benchmark(base_url=url)
    run = bench.delta(before, bench.snapshot(url))   # the run's histograms and counters
    bench.plot_server_vs_client(run.histograms, result); bench.plot_over_time(poller.df)

Command line: `python -m labs.core.bench --help`; against vLLM's own benchmark: `python -m labs.core.bench.crosscheck`.
Definitions and how other tools differ: labs/core/bench/DEFINITIONS.md.
"""

from labs.core.bench.client import RequestInput, RequestOutput, send_request
from labs.core.bench.datasets import SampleRequest, file_requests, random_requests, write_jsonl
from labs.core.bench.metrics import parse_goodput, summarize
from labs.core.bench.monitor import ResourceMonitor, monitor
from labs.core.bench.plots import (plot_latency_cdfs, plot_latency_vs_rate, plot_over_time, plot_server_vs_client,
                              plot_throughput_vs_latency)
from labs.core.bench.runner import (BenchmarkConfig, BenchmarkResult, arrival_offsets, benchmark_async, run_benchmark,
                               sweep_request_rates)
from labs.core.bench.server_metrics import Histogram, MetricsDelta, MetricsPoller, MetricsSnapshot, delta, snapshot

__all__ = [
    "BenchmarkConfig", "BenchmarkResult", "Histogram", "MetricsDelta", "MetricsPoller", "MetricsSnapshot",
    "RequestInput", "RequestOutput", "ResourceMonitor", "SampleRequest", "arrival_offsets", "benchmark_async",
    "delta", "file_requests", "monitor", "parse_goodput", "plot_latency_cdfs", "plot_latency_vs_rate",
    "plot_over_time", "plot_server_vs_client", "plot_throughput_vs_latency", "random_requests", "run_benchmark",
    "send_request", "snapshot", "summarize", "sweep_request_rates", "write_jsonl",
]
