"""Plots of benchmark results (matplotlib): CDFs, latency vs load, throughput vs latency, server views.

Every function draws into `ax` (or a new figure) and returns the matplotlib Figure, so a
notebook shows it and a script can `fig.savefig(...)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from labs.core.bench.runner import BenchmarkResult
    from labs.core.bench.server_metrics import Histogram


def _frame(result_or_df: BenchmarkResult | pd.DataFrame) -> pd.DataFrame:
    df = result_or_df if isinstance(result_or_df, pd.DataFrame) else result_or_df.df
    return df[df["success"]] if "success" in df else df


def _axes(ncols: int = 1, figsize: tuple[float, float] = (6, 4)) -> tuple[Figure, Any]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(figsize[0] * ncols, figsize[1]), squeeze=False)
    return fig, axes[0]


def _cdf(ax: Any, values: np.ndarray, label: str) -> None:
    values = np.sort(values[~np.isnan(values)])
    if len(values):
        ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", label=label)


def plot_latency_cdfs(results: dict[str, BenchmarkResult | pd.DataFrame] | BenchmarkResult | pd.DataFrame) -> Figure:
    """TTFT and TPOT cumulative distributions, one line per run.

    Why CDFs: a mean hides the tail; a CDF shows the median (y=0.5) and the p99 (y=0.99) at once,
    and two runs' curves compare at every percentile.

    Args:
        results: one result (or its `.df`), or {label: result} to overlay several runs.
    """
    runs = results if isinstance(results, dict) else {"run": results}
    fig, (ax_ttft, ax_tpot) = _axes(2)
    for label, run in runs.items():
        df = _frame(run)
        _cdf(ax_ttft, df["ttft_ms"].to_numpy(float), label)
        _cdf(ax_tpot, df["tpot_ms"].to_numpy(float), label)
    for ax, name in ((ax_ttft, "TTFT (ms)"), (ax_tpot, "TPOT (ms, excl. 1st token)")):
        ax.set(xlabel=name, ylabel="fraction of requests", ylim=(0, 1.02), title=f"CDF of {name.split(' ')[0]}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_latency_vs_rate(sweep: pd.DataFrame, metrics: Sequence[str] = ("ttft", "tpot", "e2el"),
                         stat: str = "median") -> Figure:
    """Latency against offered load, from `sweep_request_rates`: where the server saturates.

    Args:
        sweep: one row per request rate (`request_rate` + summary keys).
        metrics: which latencies, one panel each.
        stat: "median", "mean" or "p99" (any percentile the sweep reported).
    """
    fig, axes = _axes(len(metrics), (4.5, 3.5))
    rates = sweep["request_rate"].replace(np.inf, np.nan)
    x = rates.fillna(sweep["request_throughput"])  # rate=inf is drawn at the throughput it reached
    for ax, metric in zip(axes, metrics):
        ax.plot(x, sweep[f"{stat}_{metric}_ms"], marker="o")
        ax.set(xlabel="request rate (req/s)", ylabel=f"{stat} {metric.upper()} (ms)", title=metric.upper())
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_throughput_vs_latency(sweep: pd.DataFrame, latency: str = "median_tpot_ms",
                               throughput: str = "output_throughput") -> Figure:
    """The trade-off curve: each point one load level, throughput against the latency paid for it."""
    fig, (ax,) = _axes()
    ax.plot(sweep[latency], sweep[throughput], marker="o")
    for _, row in sweep.iterrows():
        ax.annotate(f"{row['request_rate']:g} req/s", (row[latency], row[throughput]), fontsize=8,
                    textcoords="offset points", xytext=(4, 4))
    ax.set(xlabel=latency.replace("_ms", " (ms)"), ylabel=throughput.replace("_", " ") + " (tok/s)",
           title="throughput vs latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_over_time(samples: pd.DataFrame, columns: Sequence[str] | None = None) -> Figure:
    """Sampled series over a run (from `MetricsPoller` or `monitor`): one panel per column.

    Args:
        samples: a frame with a `t_s` column (seconds since sampling began).
        columns: which columns; default every numeric one but `t_s`.
    """
    columns = list(columns or [c for c in samples.select_dtypes("number").columns if c != "t_s"])
    fig, axes = _axes(len(columns), (4, 3))
    for ax, column in zip(axes, columns):
        ax.plot(samples["t_s"], samples[column], marker=".")
        ax.set(xlabel="time (s)", title=column)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_server_vs_client(histograms: dict[str, Histogram], result: BenchmarkResult | pd.DataFrame,
                          pairs: dict[str, str] | None = None) -> Figure:
    """The server's histograms (as CDFs over bucket bounds) next to the client's own CDFs.

    Why: the client's TTFT includes the network and the HTTP server; the server's
    `vllm:time_to_first_token_seconds` is measured inside vLLM. The gap between the curves is
    time spent outside the engine.

    Args:
        histograms: a run's own histograms, `labs.core.bench.server_metrics.delta(before, after).histograms`.
        result: the client's run.
        pairs: server metric -> client column; default TTFT, ITL and E2E.
    """
    pairs = pairs or {"vllm:time_to_first_token_seconds": "ttft_ms",
                      "vllm:inter_token_latency_seconds": "itl_ms",
                      "vllm:e2e_request_latency_seconds": "e2el_ms"}
    pairs = {k: v for k, v in pairs.items() if k in histograms}
    df = _frame(result)
    fig, axes = _axes(max(1, len(pairs)), (4.5, 3.5))
    for ax, (metric, column) in zip(axes, pairs.items()):
        buckets = histograms[metric].buckets
        finite = buckets[np.isfinite(buckets["le"])]
        total = histograms[metric].count
        if total > 0:
            ax.step(finite["le"] * 1000, finite["count"] / total, where="post", label="server (bucket bounds)")
        values = np.concatenate(df[column].to_numpy()) if column == "itl_ms" else df[column].to_numpy(float)
        values = np.asarray(values, dtype=float)
        _cdf(ax, values, "client")
        # Buckets reach hours; stop the axis where both curves have reached 1.
        full = finite["le"][finite["count"] >= total]
        right = max(float(full.iloc[0]) * 1000 if len(full) else 1.0, float(np.nanmax(values, initial=1.0)))
        ax.set(xscale="log", xlim=(None, right * 1.5), xlabel=f"{column.removesuffix('_ms')} (ms)",
               ylabel="fraction", title=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
