"""Lab 3, part 2: why continuous batching's gain in *steps* and its gain in *throughput* differ.

The step count of a trace is a property of the trace and the batch size alone: the same on any
machine and any model. How much time a step takes is not: on a GPU a decode step of 8 requests
costs about what a step of 1 costs (reading the weights dominates), so fewer steps means
proportionally more throughput; on a CPU, and more so for a deeper model, a step's cost grows with
the batch, so the steps continuous batching saves are cheap ones (static batching of a mixed trace
spends most of its steps with one request running) and the throughput gain is smaller than the
step gain. This module measures the pieces: expected step counts, the running requests per step,
the step time against the batch size on this machine, and the throughput those predict.
"""

from __future__ import annotations

import heapq
import statistics
import time
from typing import Any

import numpy as np
import pandas as pd

from labs.batching import TraceRequest, distinct_prompt

STEP_COST_BATCH_SIZES = (1, 2, 4, 8)
# A measured throughput ratio further than this from the one the step times predict was distorted
# by other work on the machine (it slowed one mode's run more than the other's).
UNEVEN = 0.25
GROWS = 1.2  # a largest-batch step this much slower than a batch-1 step counts as "cost grows with the batch"


def expected_steps(trace: list[TraceRequest], mode: str, batch_size: int) -> int:
    """Engine steps a trace needs when every prompt is prefilled in one step (ample token budget and KV).

    A request admitted at step s samples its first token in that prefill step, so it finishes at
    step s + max_tokens - 1, and its slot admits the next waiting request at the step after.

    Args:
        trace: the workload, all requests arriving at t=0, served first come first served.
        mode: "static" (a batch starts when the previous one has finished) or "continuous".
        batch_size: running requests at most (`max_num_seqs`, the static batch size).

    Returns:
        The step in which the last request finishes.
    """
    if mode == "static":
        return sum(max(r.max_tokens for r in trace[i:i + batch_size]) for i in range(0, len(trace), batch_size))
    free_at = [1] * batch_size  # per slot: the first step it can admit a request in
    last = 0
    for req in trace:
        start = heapq.heappop(free_at)
        finish = start + req.max_tokens - 1
        last = max(last, finish)
        heapq.heappush(free_at, finish + 1)
    return last


def running_per_step(rows: pd.DataFrame) -> np.ndarray:
    """Running requests in each step of one run, from its requests' finish steps and output counts.

    Each running request gets exactly one output token per step (ignore_eos, prompts prefilled in
    one step), so a request with n outputs that finished at step f ran in steps f - n + 1 .. f.

    Args:
        rows: one run's requests (`run_batching`'s columns num_output_tokens and finish_step).

    Returns:
        counts[s - 1] = requests running in step s.
    """
    counts = np.zeros(int(rows["finish_step"].max()), dtype=int)
    for n, finish in zip(rows["num_output_tokens"], rows["finish_step"]):
        counts[int(finish) - int(n):int(finish)] += 1
    return counts


def step_time_by_batch_size(llm: Any, batch_sizes: tuple[int, ...] = STEP_COST_BATCH_SIZES,
                            num_decode_steps: int = 16, prompt_len: int = 16) -> pd.DataFrame:
    """Measured decode step time on this machine and model, one row per batch size.

    Args:
        llm: an idle engine whose `max_num_seqs` is at least the largest batch size.
        batch_sizes: running requests per step to measure.
        num_decode_steps: decode steps timed per batch size (after the prefill step).
        prompt_len: prompt tokens per request (the traces' 16).

    Returns:
        batch_size, step_ms (the fastest decode step: other processes on a shared machine can only
        stretch steps, so the fastest is the engine's own cost), median_step_ms (the typical one) and
        ms_per_token (step_ms / batch_size).
    """
    from vllm import SamplingParams

    engine, rows = llm.llm_engine, []
    params = SamplingParams(temperature=0.0, max_tokens=num_decode_steps + 1, ignore_eos=True)
    for batch_size in batch_sizes:
        for i in range(batch_size):
            engine.add_request(f"step-cost-{batch_size}-{i}", {"prompt_token_ids": distinct_prompt(500 + i, prompt_len)},
                               params)
        engine.step()  # the prefill step: not a decode step
        seconds = []
        while engine.has_unfinished_requests():
            start = time.perf_counter()
            engine.step()
            seconds.append(time.perf_counter() - start)
        step_ms = 1e3 * min(seconds)
        rows.append({"batch_size": batch_size, "step_ms": step_ms, "median_step_ms": 1e3 * statistics.median(seconds),
                     "ms_per_token": step_ms / batch_size})
    return pd.DataFrame(rows).set_index("batch_size").round(3)


def predicted_seconds(running: np.ndarray, step_costs: pd.DataFrame) -> float:
    """Seconds a run would take if each step cost what a decode step of its batch size costs here.

    Args:
        running: `running_per_step` of the run.
        step_costs: `step_time_by_batch_size` (batch sizes in between are interpolated).

    Returns:
        The predicted seconds.
    """
    sizes, ms = step_costs.index.to_numpy(), step_costs["step_ms"].to_numpy()
    return float(np.interp(running, sizes, ms).sum() / 1e3)


def explain_batching(results: pd.DataFrame, summary: pd.DataFrame, step_costs: pd.DataFrame) -> pd.DataFrame:
    """Per trace: the step ratio (machine-independent) next to the throughput ratio measured here, and why.

    Args:
        results: `compare_batching`'s rows.
        summary: `summarize_batching(results)`.
        step_costs: `step_time_by_batch_size` on the same engine.

    Returns:
        One row per trace: steps per mode and their ratio, mean running requests per step, the
        measured throughput ratio and the one the measured step times predict.
    """
    rows = []
    for trace in summary.index.get_level_values("trace").unique():
        running = {mode: running_per_step(results[(results["trace"] == trace) & (results["mode"] == mode)])
                   for mode in ("static", "continuous")}
        steps = {mode: len(r) for mode, r in running.items()}
        rows.append({
            "trace": trace, "static steps": steps["static"], "continuous steps": steps["continuous"],
            "step ratio": steps["static"] / steps["continuous"],
            "running per step, static": running["static"].mean(), "running per step, continuous": running["continuous"].mean(),
            "throughput ratio (measured)": summary.loc[(trace, "continuous"), "speedup_vs_static"],
            "throughput ratio (from step times)": (predicted_seconds(running["static"], step_costs)
                                                   / predicted_seconds(running["continuous"], step_costs)),
            # measured run time / the time the step-time table predicts for its steps (1: as measured alone)
            "slowdown vs step times": max(summary.loc[(trace, mode), "seconds"] / predicted_seconds(r, step_costs)
                                          for mode, r in running.items()),
        })
    return pd.DataFrame(rows).set_index("trace").round(2)


def explanation_lines(explained: pd.DataFrame, step_costs: pd.DataFrame) -> list[str]:
    """What the comparison shows, in sentences that hold on any machine: no fixed throughput target.

    Why no target: the throughput ratio is the step ratio times how much cheaper the static run's
    steps are, and that depends on the hardware and the model (see the module docstring).

    Args:
        explained: `explain_batching`'s table.
        step_costs: `step_time_by_batch_size` on the same engine.

    Returns:
        One line on step time against batch size, then one per trace (plus a note where other
        work on the machine visibly slowed the runs).
    """
    small, large = step_costs.index.min(), step_costs.index.max()
    growth = step_costs.loc[large, "step_ms"] / step_costs.loc[small, "step_ms"]
    lines = [f"On this machine and model a decode step of {large} requests takes {growth:.2f}x the time of a step of "
             f"{small} ({step_costs.loc[small, 'step_ms']:.1f} ms -> {step_costs.loc[large, 'step_ms']:.1f} ms); "
             f"on a GPU it is close to 1x."]
    for trace, row in explained.iterrows():
        measured, predicted = row["throughput ratio (measured)"], row["throughput ratio (from step times)"]
        if row["static steps"] == row["continuous steps"]:
            lines.append(f"{trace}: both modes take {int(row['static steps'])} engine steps (no request waits on a longer "
                         f"one, so there is nothing to gain); throughput ratio here {measured:.2f}x.")
        else:
            lines.append(
                f"{trace}: static batching takes {row['step ratio']:.2f}x the engine steps of continuous batching "
                f"({int(row['static steps'])} vs {int(row['continuous steps'])}): a property of the trace and the batch "
                f"size, the same on any machine. Its steps run {row['running per step, static']:.1f} requests on average "
                f"against {row['running per step, continuous']:.1f}; "
                + ("a step's cost grows with its batch here, so continuous batching's fuller steps cost more and it gives "
                   if growth >= GROWS else "a step costs about the same for any batch here, so continuous batching gives ")
                + f"{measured:.2f}x the throughput (the step times above predict {predicted:.2f}x). Where a step costs "
                f"the same for any batch, the throughput ratio approaches the step ratio.")
        if abs(measured / predicted - 1) > UNEVEN:
            lines.append(f"  (The measured {measured:.2f}x is {abs(measured / predicted - 1):.0%} off what the step times "
                         f"predict, and the runs took up to {row['slowdown vs step times']:.1f}x the time their steps take "
                         "on their own: other programs were using the cores unevenly; rerun when the machine is idle. "
                         "The step ratio is unaffected.)")
    return lines


def plot_step_costs(step_costs: pd.DataFrame) -> Any:
    """Decode step time and time per token against the batch size."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(step_costs.index, step_costs["step_ms"], "o-", label="ms per decode step")
    ax.plot(step_costs.index, step_costs["ms_per_token"], "s--", label="ms per token (step / batch)")
    ax.set(xlabel="running requests in the step", ylabel="ms", title="decode step time vs batch size (this machine)")
    ax.set_xticks(list(step_costs.index))
    ax.legend()
    fig.tight_layout()
    return fig
