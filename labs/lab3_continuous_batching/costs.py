"""Lab 3, part 2: why continuous batching's gain in *steps* and its gain in *throughput* differ.

The step count of a trace is a property of the trace and the batch size alone: the same on any
machine and any model. How much time a step takes is not: on a GPU a decode step of 8 requests
costs about what a step of 1 costs (reading the weights dominates), so fewer steps means
proportionally more throughput; on a CPU, and more so for a deeper model, a step's cost grows with
the batch, so the steps continuous batching saves are cheap ones (static batching of a mixed trace
spends most of its steps with one request running) and the throughput gain is smaller than the
step gain. This module measures the pieces: expected step counts, the running requests per step,
the step time against the batch size on this machine, and the step time of each run, which turns the
step ratio into the throughput ratio.
"""

from __future__ import annotations

import heapq
import statistics
import time
from typing import Any

import numpy as np
import pandas as pd

from labs.lab3_continuous_batching.traces import TraceRequest, distinct_prompt

STEP_COST_BATCH_SIZES = (1, 2, 4, 8)
CONTENDED = 2.0  # a run's mean step this many times the slowest measured step means other work slowed it


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


def _intervals(rows: pd.DataFrame) -> list[tuple[int, int, int]]:
    """(first step, finish step, prompt tokens) per request: n outputs finishing at f ran in f - n + 1 .. f."""
    prompt_lens = rows["num_prompt_tokens"] if "num_prompt_tokens" in rows else [0] * len(rows)
    return [(int(f) - int(n) + 1, int(f), int(p))
            for n, f, p in zip(rows["num_output_tokens"], rows["finish_step"], prompt_lens)]


def running_per_step(rows: pd.DataFrame) -> np.ndarray:
    """Running requests in each step of one run, from its requests' finish steps and output counts.

    Each running request gets exactly one output token per step (ignore_eos, prompts prefilled in
    one step, which also samples the first token), so a request with n outputs that finished at
    step f ran in steps f - n + 1 .. f.

    Args:
        rows: one run's requests (`run_batching`'s columns num_output_tokens and finish_step).

    Returns:
        counts[s - 1] = requests running in step s.
    """
    counts = np.zeros(int(rows["finish_step"].max()), dtype=int)
    for first, finish, _ in _intervals(rows):
        counts[first - 1:finish] += 1
    return counts


def tokens_per_step(rows: pd.DataFrame) -> np.ndarray:
    """Tokens each step of one run computed: a request's whole prompt in its first step, then one per step.

    Why it matters: continuous batching admits waiting requests while others decode, so many of
    its steps carry prefills as well, and a step's cost follows the tokens it computes.

    Args:
        rows: one run's requests (`run_batching`'s columns, num_prompt_tokens included).

    Returns:
        tokens[s - 1] = tokens computed in step s.
    """
    tokens = np.zeros(int(rows["finish_step"].max()), dtype=int)
    for first, finish, prompt_len in _intervals(rows):
        tokens[first - 1] += prompt_len
        tokens[first:finish] += 1
    return tokens


def step_time_by_batch_size(llm: Any, batch_sizes: tuple[int, ...] = STEP_COST_BATCH_SIZES, rounds: int = 4,
                            decode_steps_per_round: int = 4, prompt_len: int = 16) -> pd.DataFrame:
    """Measured step times on this machine and model, one row per batch size.

    Why rounds: each round measures every batch size in turn (a prefill step, then a few decode
    steps), so a spell of other work on a shared machine stretches a few samples of each batch
    size instead of all samples of one; the fastest sample is then the engine's own cost.

    Args:
        llm: an idle engine whose `max_num_seqs` is at least the largest batch size.
        batch_sizes: running requests per step to measure.
        rounds: times each batch size is measured.
        decode_steps_per_round: decode steps timed per batch size and round.
        prompt_len: prompt tokens per request (the traces' 16).

    Returns:
        batch_size, step_ms (the fastest decode step), median_step_ms (the typical one),
        ms_per_token (step_ms / batch_size), prefill_tokens (batch_size x prompt_len) and
        prefill_ms (the fastest step that prefilled them).
    """
    from vllm import SamplingParams

    engine, prompt_index = llm.llm_engine, 500
    params = SamplingParams(temperature=0.0, max_tokens=decode_steps_per_round + 1, ignore_eos=True)
    prefill_s: dict[int, list[float]] = {b: [] for b in batch_sizes}
    decode_s: dict[int, list[float]] = {b: [] for b in batch_sizes}
    for _ in range(rounds):
        for batch_size in batch_sizes:
            for _ in range(batch_size):  # prompts never seen before: no prefix-cache hits
                prompt_index += 1
                engine.add_request(f"step-cost-{prompt_index}",
                                   {"prompt_token_ids": distinct_prompt(prompt_index, prompt_len)}, params)
            seconds = []
            while engine.has_unfinished_requests():
                start = time.perf_counter()
                engine.step()
                seconds.append(time.perf_counter() - start)
            prefill_s[batch_size].append(seconds[0])
            decode_s[batch_size] += seconds[1:]
    rows = [{"batch_size": b, "step_ms": 1e3 * min(decode_s[b]), "median_step_ms": 1e3 * statistics.median(decode_s[b]),
             "ms_per_token": 1e3 * min(decode_s[b]) / b, "prefill_tokens": b * prompt_len,
             "prefill_ms": 1e3 * min(prefill_s[b])} for b in batch_sizes]
    return pd.DataFrame(rows).set_index("batch_size").round(3)


def explain_batching(results: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per trace: the step ratio (machine-independent) and what a step cost in each mode here.

    The throughput ratio is exactly the step ratio times the ratio of the two runs' mean step
    times (same tokens; time = steps x mean step time), so this table says why it differs from
    the step ratio: continuous batching's steps compute more tokens, and on a CPU they cost more.

    Args:
        results: `compare_batching`'s rows.
        summary: `summarize_batching(results)`.

    Returns:
        One row per trace: steps per mode and their ratio, running requests and tokens per step,
        mean ms per step in each run, and the measured throughput ratio.
    """
    rows = []
    for trace in summary.index.get_level_values("trace").unique():
        runs = {mode: results[(results["trace"] == trace) & (results["mode"] == mode)] for mode in ("static", "continuous")}
        running = {mode: running_per_step(rows_) for mode, rows_ in runs.items()}
        tokens = {mode: tokens_per_step(rows_) for mode, rows_ in runs.items()}
        steps = {mode: len(r) for mode, r in running.items()}
        ms = {mode: 1e3 * summary.loc[(trace, mode), "seconds"] / steps[mode] for mode in steps}
        rows.append({
            "trace": trace, "static steps": steps["static"], "continuous steps": steps["continuous"],
            "step ratio": steps["static"] / steps["continuous"],
            "running per step, static": running["static"].mean(), "running per step, continuous": running["continuous"].mean(),
            "tokens per step, static": tokens["static"].mean(), "tokens per step, continuous": tokens["continuous"].mean(),
            "ms per step, static": ms["static"], "ms per step, continuous": ms["continuous"],
            "throughput ratio": summary.loc[(trace, "continuous"), "speedup_vs_static"],
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
        One line on step time against batch size, then one per trace.
    """
    small, large = step_costs.index.min(), step_costs.index.max()
    growth = step_costs.loc[large, "step_ms"] / step_costs.loc[small, "step_ms"]
    lines = [f"On this machine and model a decode step of {large} requests takes {growth:.2f}x the time of a step of "
             f"{small} ({step_costs.loc[small, 'step_ms']:.1f} ms -> {step_costs.loc[large, 'step_ms']:.1f} ms; on a GPU "
             f"it is close to 1x), and a step that prefills {int(step_costs.loc[large, 'prefill_tokens'])} prompt tokens "
             f"takes {step_costs.loc[large, 'prefill_ms']:.1f} ms."]
    for trace, row in explained.iterrows():
        ms_static, ms_continuous = row["ms per step, static"], row["ms per step, continuous"]
        if row["static steps"] == row["continuous steps"]:
            lines.append(f"{trace}: both modes take {int(row['static steps'])} engine steps of the same tokens (no request "
                         f"waits on a longer one, so there is nothing to gain); the throughput ratio here, "
                         f"{row['throughput ratio']:.2f}x, differs from 1x only by timing variation on this machine.")
            continue
        lines.append(
            f"{trace}: static batching takes {row['step ratio']:.2f}x the engine steps of continuous batching "
            f"({int(row['static steps'])} vs {int(row['continuous steps'])}): a property of the trace and the batch "
            f"size, the same on any machine. Its steps compute {row['tokens per step, static']:.1f} tokens on average "
            f"({row['running per step, static']:.1f} running requests) against {row['tokens per step, continuous']:.1f} "
            f"({row['running per step, continuous']:.1f} requests, plus the prompts of those admitted as others finish), "
            f"and here took {ms_static:.2f} ms each against {ms_continuous:.2f} ms. So continuous batching gives "
            f"{row['step ratio']:.2f} x {ms_static / ms_continuous:.2f} = {row['throughput ratio']:.2f}x the throughput "
            f"on this machine; where a step costs about the same whatever it computes (a GPU at small batches), the "
            f"throughput ratio approaches the step ratio.")
    # No step of these traces computes more tokens than the table's largest prefill, so a run whose
    # steps took far longer was slowed by other programs: say so, since its ratio is that moment's.
    slowest_alone = max(step_costs["prefill_ms"].max(), step_costs["step_ms"].max())
    slowest_run = explained[["ms per step, static", "ms per step, continuous"]].to_numpy().max()
    if slowest_run > CONTENDED * slowest_alone:
        lines.append(f"(The runs' steps took up to {slowest_run:.1f} ms, more than {CONTENDED:g}x the slowest step of the "
                     f"table ({slowest_alone:.1f} ms): other programs were using the cores meanwhile, so the throughput "
                     "ratios are this moment's; rerun when the machine is idle. The step ratios are not affected.)")
    return lines


def plot_step_costs(step_costs: pd.DataFrame) -> Any:
    """Decode step time and time per token against the batch size."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(step_costs.index, step_costs["step_ms"], "o-", label="ms per decode step")
    ax.plot(step_costs.index, step_costs["prefill_ms"], "^:", label="ms per prefill step (batch x prompt tokens)")
    ax.plot(step_costs.index, step_costs["ms_per_token"], "s--", label="ms per token (step / batch)")
    ax.set(xlabel="running requests in the step", ylabel="ms", title="decode step time vs batch size (this machine)")
    ax.set_xticks(list(step_costs.index))
    ax.legend()
    fig.tight_layout()
    return fig
