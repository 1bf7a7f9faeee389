"""The capstone notebook's measurements: one translation job, run sequentially and concurrently.

Both runs translate the same documents on the same server, one after the other, so their ratio
is a fair comparison on a noisy machine. Around each run the server's `/metrics` are read
before and after (prefix-cache hits, latency histograms) and polled during (KV-cache usage,
running and waiting requests), and every request's TTFT/TPOT comes from the pipeline's own
streamed timings, taken by the benchmark harness's timer (`labs.core.bench.timing`) and laid out
in its columns: the same quantities under the same names, so its plots apply unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from labs.core import bench, serve
from labs.core.serve.config import API_KEY_ENV, default_url, env_setting
from labs.capstone_translation.pipeline import TranslateConfig
from labs.capstone_translation.run import JobResult, run_job


def describe_setup() -> None:
    """Print the model and hardware the job will use, as every lab does first.

    With VLLM_BASE_URL set, the model is whatever that server serves (shown once it answers);
    otherwise the workbook's server runs the workbook's model, resolved here.
    """
    from labs.core.engine import plan_run
    from labs.core.hardware import detect_hardware

    configured = env_setting("VLLM_BASE_URL")
    if configured:
        print(f"Model:    whatever the server at {default_url()} serves (VLLM_BASE_URL)")
        print(f"Hardware: {detect_hardware().describe()} (this machine; the server may run elsewhere)")
    else:
        print(plan_run().describe())


def lab_server(log_dir: Path) -> serve.OwnedServer:
    """A running server: the one at VLLM_BASE_URL if it answers, else the workbook's, owned by this kernel.

    Why not always start one: a learner with a GPU server already running (`make vllm-start-bg`,
    a real model) should measure THAT server; on a fresh machine the notebook brings its own
    (`serve.owned_server`: a free port, its own log folder), which stops when the kernel ends,
    even if the notebook failed half-way, and which a rerun reuses instead of starting another.

    Args:
        log_dir: the notebook's server log folder (one server per folder).

    Returns:
        The server; `.owned` is False for the one at VLLM_BASE_URL.
    """
    configured = env_setting("VLLM_BASE_URL")
    if configured and serve.status(configured).up:
        print(f"Using the server at {default_url()} (VLLM_BASE_URL)")
        return serve.OwnedServer(default_url())  # not owned: .stop() leaves it running
    return serve.owned_server("vllm-capstone", log_dir=log_dir)


@dataclass
class RunMeasurement:
    """One run of the job with its server-side view.

    Attributes:
        label: e.g. "sequential" or "concurrent (8)".
        job: the pipeline's result (documents, per-request timings).
        server: what /metrics added during the run.
        gauges: KV-cache usage and queue lengths sampled during the run.
    """

    label: str
    job: JobResult
    server: bench.MetricsDelta
    gauges: pd.DataFrame = field(default_factory=pd.DataFrame)

    def check_measured(self) -> None:
        """Refuse a run that sent no requests: its table row would be empty, and a ratio meaningless.

        Raises:
            WorkbookError: with each document's status, so the cause (unreadable inputs, a
                folder of finished journals) is visible.
        """
        from labs.core.errors import WorkbookError

        if self.job.requests_df.empty:
            statuses = ", ".join(f"{d.name}: {d.status}" for d in self.job.documents) or "no input documents"
            raise WorkbookError(f"The {self.label} run sent no requests, so there is nothing to measure ({statuses}). "
                                "Give measure_run input files that can be read, and an out_dir of its own "
                                "(it is emptied before each run).")

    def row(self) -> dict[str, object]:
        """One row of the comparison table (see `compare_sequential_concurrent`)."""
        self.check_measured()
        df = self.job.requests_df
        num_output_tokens = int(df["output_len"].sum())
        # the engine's own count of requests in one step, polled: the machine-independent sign of batching
        running = self.gauges.get("num_requests_running", pd.Series(dtype=float))
        return {"run": self.label, "requests": len(df), "seconds": round(self.job.duration_s, 2),
                "output tokens/s": round(num_output_tokens / self.job.duration_s, 1),
                "median TTFT ms": round(df["ttft_ms"].median(), 1), "median TPOT ms": round(df["tpot_ms"].median(), 1),
                "prefix-cache hit rate": round(self.server.prefix_cache_hit_rate, 3),
                "peak running requests": running.max() if not running.empty else float("nan")}


def measure_run(label: str, inputs: list[Path], url: str, out_dir: Path, concurrency: int,
                **config: object) -> RunMeasurement:
    """Translate `inputs` into `out_dir`, emptied first so that nothing is skipped, and measure it.

    Why emptied: the pipeline resumes from journals, so a second run into the same folder (the
    notebook run again) would skip every chunk and measure nothing. The folder is emptied only if
    an earlier measurement made it; other contents are moved aside (see `fresh_out_dir`).

    Args:
        label: the run's name in the table.
        inputs: documents to translate.
        url: the server.
        out_dir: this run's own folder.
        concurrency: requests in flight at once.
        **config: more `TranslateConfig` fields.

    Returns:
        The job with the server's view of it.

    Raises:
        WorkbookError: the run sent no requests (see `RunMeasurement.check_measured`).
    """
    from labs.capstone_translation.outputs import fresh_out_dir

    moved = fresh_out_dir(out_dir)
    if moved is not None:
        print(f"{out_dir} held files that no measurement wrote: moved to {moved}")
    api_key = env_setting(API_KEY_ENV)
    before = bench.snapshot(url, api_key)
    with bench.MetricsPoller(url, interval_s=0.2, api_key=api_key) as poller:
        job = run_job(inputs, TranslateConfig(out_dir=out_dir, concurrency=concurrency, **config), base_url=url)
    time.sleep(0.5)  # the server records a request's statistics just after its last chunk is streamed
    measurement = RunMeasurement(label, job, bench.delta(before, bench.snapshot(url, api_key)), poller.df)
    measurement.check_measured()
    return measurement


def compare_sequential_concurrent(inputs: list[Path], url: str, out_root: Path, concurrency: int = 8,
                                  **config: object) -> tuple[pd.DataFrame, list[RunMeasurement]]:
    """The same job twice, one request at a time and then `concurrency` at a time.

    Each run translates into its own folder under `out_root`, emptied first, so calling this
    again (a notebook run twice) measures the same work again.

    Args:
        inputs: documents to translate.
        url: the server.
        out_root: parent of the runs' folders (`sequential/`, `concurrent/`).
        concurrency: requests in flight in the second run.
        **config: more `TranslateConfig` fields.

    Returns:
        (a table with one row per run and the throughput ratio, the two measurements).

    Raises:
        WorkbookError: a run sent no requests (nothing to compare).
    """
    runs = [measure_run("sequential", inputs, url, out_root / "sequential", 1, **config),
            measure_run(f"concurrent ({concurrency})", inputs, url, out_root / "concurrent", concurrency, **config)]
    table = pd.DataFrame([r.row() for r in runs])
    table["speedup"] = (table["output tokens/s"] / table["output tokens/s"].iloc[0]).round(2)
    return table, runs
