"""Lab 3 (continuous batching): the code behind notebooks/03_continuous_batching.ipynb.

1. Watch the scheduler under pressure: `SCARCE_KV` gives the engine so few KV blocks and so small
   a token budget that chunked prefill and preemption happen within a few steps; `steps_table`,
   `request_summary` and `plot_steps` turn an `EngineObserver`'s history into tables and a figure.
2. Static vs continuous batching on the same trace and the same engine: `compare_batching`;
   `labs.lab3_continuous_batching.costs` explains its numbers (the step ratio, the same on any machine, and the
   step time against the batch size, which turns it into this machine's throughput ratio);
   `python -m labs.lab3_continuous_batching.batching` runs both as a benchmark and prints the ratios.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import pandas as pd

from labs.core import vllm_internals as vi
from labs.core.engine import free_llm, make_llm
from labs.core.live import StepObservation
from labs.lab3_continuous_batching.traces import TraceRequest, benchmark_traces, distinct_prompt

# 12 blocks of 32 tokens, block 0 being vLLM's null block: 11 x 32 = 352 tokens, so one request of
# max_model_len fits (vLLM refuses to start otherwise) but four long ones do not. A 64-token
# budget splits every prompt longer than 64 across steps. Prefix caching is off so that the
# recompute after a preemption is paid in full, not partly served from blocks still cached.
SCARCE_KV: dict[str, Any] = dict(block_size=32, num_gpu_blocks_override=12, max_model_len=352,
                                 max_num_seqs=4, max_num_batched_tokens=64, enable_prefix_caching=False)


# --- 1. What the scheduler did, step by step --------------------------------------------------


def steps_table(history: list[StepObservation]) -> pd.DataFrame:
    """One row per engine step: tokens scheduled, queue lengths, free blocks, events."""
    return pd.DataFrame([{
        "step": o.step, "num_scheduled_tokens": sum(o.num_scheduled_tokens.values()),
        "scheduled": " ".join(f"{rid}:{n}" for rid, n in o.num_scheduled_tokens.items()),
        "num_running": len(o.running_ids), "num_waiting": len(o.waiting_ids), "num_free_blocks": o.num_free_blocks,
        "preempted": ",".join(o.preempted_ids), "finished": ",".join(o.finished_ids), "ms": round(o.seconds * 1e3, 1),
    } for o in history]).set_index("step")


def scheduled_tokens_table(history: list[StepObservation], request_ids: list[str]) -> pd.DataFrame:
    """Steps x requests: how many tokens each request got in each step (0 = not scheduled)."""
    rows = [{rid: o.num_scheduled_tokens.get(rid, 0) for rid in request_ids} for o in history]
    return pd.DataFrame(rows, index=pd.Index([o.step for o in history], name="step"))


def request_summary(history: list[StepObservation], trace: list[TraceRequest]) -> pd.DataFrame:
    """Per request: its prefill chunks, preemptions, the recompute after each, and its decode steps.

    A request prefills its `len(prompt)` tokens first. One preempted after decoding, with C tokens
    computed, holds C + 1 tokens (the last sampled one is not computed yet), and all of them are
    prefilled again: vLLM v1 recomputes instead of swapping KV blocks out.
    """
    rows = []
    for req in trace:
        to_prefill, computed, num_decode_steps = len(req.prompt_token_ids), 0, 0
        first_step = finished_step = None
        segments: list[list[int]] = [[]]  # prefill chunks per admission (first run, then recomputes)
        for o in history:
            if req.request_id in o.preempted_ids:
                to_prefill, computed = max(len(req.prompt_token_ids), computed + 1), 0
                segments.append([])
            n = o.num_scheduled_tokens.get(req.request_id, 0)
            if n:
                first_step = first_step or o.step
                if computed < to_prefill:
                    segments[-1].append(n)
                else:
                    num_decode_steps += 1
                computed += n
            if req.request_id in o.finished_ids:
                finished_step = o.step
        rows.append({
            "request_id": req.request_id, "num_prompt_tokens": len(req.prompt_token_ids),
            "prefill_chunks": "+".join(map(str, segments[0])), "num_preemptions": len(segments) - 1,
            "recompute_chunks": " | ".join("+".join(map(str, s)) for s in segments[1:]),
            "num_decode_steps": num_decode_steps, "first_step": first_step, "finished_step": finished_step,
        })
    return pd.DataFrame(rows).set_index("request_id")


def plot_steps(history: list[StepObservation], request_ids: list[str]) -> Any:
    """Heat map of tokens per request per step (preemptions x, finishes |), queues, free blocks."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    tokens = scheduled_tokens_table(history, request_ids)  # (num_steps, num_requests)
    steps = steps_table(history)
    fig, (ax_map, ax_queue, ax_free) = plt.subplots(
        3, 1, figsize=(12, 6.5), sharex=True, gridspec_kw={"height_ratios": [2.2, 1, 1]})
    grid = np.ma.masked_equal(tokens.to_numpy().T, 0)  # (num_requests, num_steps)
    extent = (tokens.index[0] - 0.5, tokens.index[-1] + 0.5, len(request_ids) - 0.5, -0.5)
    image = ax_map.imshow(grid, aspect="auto", cmap="viridis", norm=LogNorm(vmin=1, vmax=max(grid.max(), 2)),
                          extent=extent, interpolation="nearest")
    for row, rid in enumerate(request_ids):
        for o in history:
            if rid in o.preempted_ids:
                ax_map.plot(o.step, row, "rx", markersize=10, markeredgewidth=2)
            if rid in o.finished_ids:
                ax_map.plot(o.step + 0.5, row, "k|", markersize=12, markeredgewidth=2)
    ax_map.set_yticks(range(len(request_ids)), request_ids)
    ax_map.set_title("tokens scheduled per step (bright = prefill chunk, dark = 1 decode token; "
                     "x = preempted, | = finished)")
    # the colorbar sits outside the heat map, so all three panels keep the same x axis
    fig.colorbar(image, cax=ax_map.inset_axes([1.01, 0, 0.012, 1]), label="tokens")
    ax_queue.step(steps.index, steps["num_running"], where="mid", label="running")
    ax_queue.step(steps.index, steps["num_waiting"], where="mid", label="waiting")
    ax_queue.set(ylabel="requests")
    ax_queue.legend(loc="upper right")
    ax_free.step(steps.index, steps["num_free_blocks"], where="mid", color="tab:green")
    ax_free.set(ylabel="free KV blocks", xlabel="engine step")
    fig.tight_layout()
    return fig


# --- 2. Static vs continuous batching ----------------------------------------------------------


def run_batching(llm: Any, trace: list[TraceRequest], mode: str, batch_size: int) -> pd.DataFrame:
    """Run `trace` (all requests arrive at t=0) in one mode; one row per request.

    Args:
        llm: an idle engine with `max_num_seqs == batch_size`.
        trace: the workload.
        mode: "static": submit `batch_size` requests, step until all finished, then the next batch.
            "continuous": submit everything; the scheduler admits a waiting request the step
            after a running one finishes.
        batch_size: requests per static batch.

    Returns:
        request_id, num_prompt_tokens, num_output_tokens, finish_step and latency_s (from t=0, so a
        request of a later static batch also counts the time it waited for its batch).
    """
    engine = llm.llm_engine
    finished: dict[str, tuple[int, int, float]] = {}  # request id -> (num_output_tokens, finish_step, latency_s)
    groups = [trace[i:i + batch_size] for i in range(0, len(trace), batch_size)] if mode == "static" else [trace]
    start, num_steps = time.perf_counter(), 0
    for group in groups:
        for req in group:
            engine.add_request(req.request_id, {"prompt_token_ids": req.prompt_token_ids},
                               req.sampling_params(final_only=True))
        while engine.has_unfinished_requests():  # static: the next batch waits for the slowest request
            outputs = engine.step()
            num_steps += 1
            for out in outputs:
                if out.finished:
                    finished[vi.external_request_id(out.request_id)] = (
                        len(out.outputs[0].token_ids), num_steps, time.perf_counter() - start)
    return pd.DataFrame([(r.request_id, len(r.prompt_token_ids), *finished[r.request_id]) for r in trace],
                        columns=["request_id", "num_prompt_tokens", "num_output_tokens", "finish_step", "latency_s"])


def compare_batching(llm: Any, traces: dict[str, list[TraceRequest]], repeats: int = 1) -> pd.DataFrame:
    """Static and continuous batching of each trace on one engine, batch size = its `max_num_seqs`.

    Args:
        llm: an idle engine (see `run_batching`).
        traces: name -> workload.
        repeats: runs per trace and mode, the modes taking turns; the fastest run is kept. Other
            processes on a shared machine can only add time, so the fastest run is the fairest.

    Returns:
        One row per request and mode: trace, mode, request_id, num_output_tokens, finish_step, latency_s.
    """
    batch_size = vi.scheduler_limits(llm).max_num_seqs
    run_batching(llm, [TraceRequest("warm-up", distinct_prompt(999, 16), 4)], "continuous", batch_size)
    fastest: dict[tuple[str, str], pd.DataFrame] = {}
    for name, trace in traces.items():
        for _ in range(repeats):
            for mode in ("static", "continuous"):
                run = run_batching(llm, trace, mode, batch_size)
                best = fastest.get((name, mode))
                if best is None or run["latency_s"].max() < best["latency_s"].max():
                    fastest[(name, mode)] = run
    frames = [run.assign(trace=name, mode=mode) for (name, mode), run in fastest.items()]
    return pd.concat(frames, ignore_index=True).set_index(["trace", "mode"]).reset_index()  # trace, mode first


def summarize_batching(results: pd.DataFrame) -> pd.DataFrame:
    """Per trace and mode: steps, seconds, throughput (output tokens/s), latencies, and the speed-up."""
    summary = results.groupby(["trace", "mode"], sort=False).agg(
        num_requests=("request_id", "count"), num_output_tokens=("num_output_tokens", "sum"),
        num_steps=("finish_step", "max"), seconds=("latency_s", "max"),
        p50_latency_s=("latency_s", "median"), p90_latency_s=("latency_s", lambda s: s.quantile(0.9)))
    summary["throughput_tok_s"] = summary["num_output_tokens"] / summary["seconds"]
    static = summary.xs("static", level="mode")["throughput_tok_s"]
    summary["speedup_vs_static"] = summary["throughput_tok_s"] / static.reindex(summary.index, level="trace")
    return summary.round(3)


def plot_batching(results: pd.DataFrame) -> Any:
    """Throughput bars per trace and mode, next to each trace's latency CDF."""
    import matplotlib.pyplot as plt
    import numpy as np

    summary = summarize_batching(results)
    traces = list(results["trace"].unique())
    fig, axes = plt.subplots(1, 1 + len(traces), figsize=(5 * (1 + len(traces)), 4))
    summary["throughput_tok_s"].unstack("mode")[["static", "continuous"]].loc[traces].plot.bar(ax=axes[0], rot=0)
    axes[0].set(ylabel="output tokens / s", title="throughput")
    for ax, trace in zip(axes[1:], traces):
        for mode in ("static", "continuous"):
            latency = np.sort(results.query("trace == @trace and mode == @mode")["latency_s"].to_numpy())
            ax.step(latency, np.arange(1, len(latency) + 1) / len(latency), where="post", label=mode)
        ax.set(xlabel="latency from t=0 (s)", ylabel="fraction of requests finished", title=f"latency CDF: {trace}")
        ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Benchmark: static vs continuous batching on equal and mixed output lengths; prints the ratios and why."""
    from labs.lab3_continuous_batching.costs import explain_batching, explanation_lines, step_time_by_batch_size

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", default=None, help="default: VLLM_MODEL, else the workbook's choice")
    parser.add_argument("--batch-size", type=int, default=8, help="static batch size = max_num_seqs")
    parser.add_argument("--num-batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="runs per trace and mode; the fastest counts")
    args = parser.parse_args(argv)
    llm = make_llm(args.model, max_num_seqs=args.batch_size)
    results = compare_batching(llm, benchmark_traces(args.batch_size, args.num_batches), args.repeats)
    summary = summarize_batching(results)
    step_costs = step_time_by_batch_size(llm, tuple(sorted({1, 2, 4, args.batch_size})))
    free_llm(llm)
    explained = explain_batching(results, summary)
    print(summary.to_string())
    print("\ndecode step time by batch size:\n" + step_costs.to_string())
    print("\n" + explained.to_string())
    print("\n".join(explanation_lines(explained, step_costs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
