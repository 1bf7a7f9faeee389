"""Lab 6 logic: where an engine step's time goes, and how close decode gets to the memory roofline.

Four views of the same live engine: vLLM's own torch profiler (a trace for https://ui.perfetto.dev
and the top operators), the wall time of each stage of a request, `py-spy dump` of a running
server, and the decode roofline (memory bandwidth caps how fast all weights can be read per step).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from labs.core import vllm_internals as vi
from labs.core.debug.pyspy import (  # noqa: F401  (this lab's API: the notebook calls prof.py_spy_dump)
    PySpyResult, ThreadDump, explain_thread, parse_py_spy_dump, py_spy_dump, thread_table)
from labs.core.paths import RUNS_DIR

PROFILES_DIR = RUNS_DIR / "profiles"  # git-ignored
STAGES = ("tokenization", "scheduling", "forward", "sampling", "detokenization")


# --- 1. vLLM's torch profiler -----------------------------------------------------------------


def profiler_config(trace_dir: Path = PROFILES_DIR) -> dict[str, Any]:
    """The `profiler_config` to build an engine with: `make_llm(profiler_config=profiler_config())`.

    Why at build time: vLLM creates its profiler from this config when the engine starts, so it
    cannot be switched on later. A plain (not gzipped) JSON trace opens everywhere, and without
    Python stacks it stays small enough for Perfetto to load quickly.
    """
    trace_dir.mkdir(parents=True, exist_ok=True)
    return {"profiler": "torch", "torch_profiler_dir": str(trace_dir.resolve()),
            "torch_profiler_use_gzip": False, "torch_profiler_with_stack": False}


@dataclass(frozen=True)
class ProfileResult:
    """What one profiled `generate` left: the trace vLLM wrote, our operator table, vLLM's printed table."""

    trace_path: Path
    top_ops: pd.DataFrame
    vllm_table: str


def profile_generate(llm: Any, prompts: list[Any], params: Any, *, prefix: str = "lab6",
                     num_top_ops: int = 15) -> ProfileResult:
    """Run `llm.generate` between vLLM's `start_profile()` and `stop_profile()`.

    Args:
        llm: an engine built with `profiler_config(...)`, its core in this process.
        prompts, params: what to generate; every engine step they take is in the trace.
        prefix: the trace file's name starts with it (`<prefix>_rank0.<id>.pt.trace.json`).
        num_top_ops: rows of the operator table.
    """
    trace_dir = vi.profiler_trace_dir(llm)
    started = time.time()
    llm.start_profile(prefix)
    llm.generate(prompts, params, use_tqdm=False)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # vLLM prints a 50-row table; the lab shows its own
        llm.stop_profile()
    traces = [p for p in trace_dir.glob(f"{prefix}_*.pt.trace.json") if p.stat().st_mtime >= started - 1]
    if not traces:
        raise FileNotFoundError(f"vLLM wrote no trace named {prefix}_*.pt.trace.json in {trace_dir}")
    trace_path = max(traces, key=lambda p: p.stat().st_mtime)
    return ProfileResult(trace_path, top_operators(vi.worker_torch_profiler(llm), num_top_ops), printed.getvalue())


def top_operators(profile: Any, limit: int = 15) -> pd.DataFrame:
    """Operators by self CPU time: time inside the operator itself, not in what it called.

    Why self time: total time counts a parent and its children twice, so the top rows would be
    wrappers (a whole engine step); self time points at the kernels that did the work.
    """
    rows = [{"operator": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "cpu_total_ms": e.cpu_time_total / 1e3,
             "calls": e.count} for e in profile.key_averages()]
    table = pd.DataFrame(rows).sort_values("self_cpu_ms", ascending=False, ignore_index=True)
    table["self_cpu_pct"] = 100 * table["self_cpu_ms"] / table["self_cpu_ms"].sum()
    return table.head(limit)


def annotated_steps(trace_path: Path) -> pd.DataFrame:
    """vLLM's name for each engine step in a trace: `execute_context_<reqs>(<tokens>)_generation_<reqs>(<tokens>)`.

    Why: the worker labels every step with its prefill ("context") and decode ("generation")
    requests and tokens, so prefill and decode steps can be told apart and timed in the trace.
    """
    pattern = re.compile(r"execute_context_(\d+)\((\d+)\)_generation_(\d+)\((\d+)\)")
    rows = []
    for event in json.loads(Path(trace_path).read_text())["traceEvents"]:  # what Perfetto draws
        match = pattern.fullmatch(str(event.get("name", "")))
        if match and event.get("ph") == "X":
            ctx_reqs, ctx_tokens, gen_reqs, gen_tokens = map(int, match.groups())
            rows.append({"start_ms": event["ts"] / 1e3, "ms": event["dur"] / 1e3, "prefill_reqs": ctx_reqs,
                         "prefill_tokens": ctx_tokens, "decode_reqs": gen_reqs, "decode_tokens": gen_tokens})
    table = pd.DataFrame(rows, columns=["start_ms", "ms", "prefill_reqs", "prefill_tokens", "decode_reqs",
                                        "decode_tokens"])
    table["start_ms"] -= table["start_ms"].min()  # from the first step on
    return table.sort_values("start_ms", ignore_index=True)


# --- 2. where the time goes per request -------------------------------------------------------


def time_stages(llm: Any, prompts: list[str], params: Any) -> pd.DataFrame:
    """Run `llm.generate(prompts)` (text: token ids would skip tokenization) and time each stage.

    Returns:
        One row per stage: calls, total_ms, ms_per_request, share (of the wall time); "other" is
        `generate` outside every stage (the engine loop, input checks, building outputs).
    """
    with vi.timed_engine_stages(llm) as durations:
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        wall_ms = 1e3 * (time.perf_counter() - start)
    rows = [{"stage": s, "calls": len(durations[s]), "total_ms": 1e3 * sum(durations[s])} for s in STAGES]
    rows.append({"stage": "other", "calls": 0, "total_ms": max(0.0, wall_ms - sum(r["total_ms"] for r in rows))})
    table = pd.DataFrame(rows)
    return table.assign(ms_per_request=table["total_ms"] / len(prompts), share=table["total_ms"] / wall_ms)


def plot_stages(tables: dict[str, pd.DataFrame]) -> Any:
    """A stacked bar per run (label -> `time_stages` table): milliseconds per request by stage."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bottoms = [0.0] * len(tables)
    for stage in (*STAGES, "other"):
        heights = [float(t.set_index("stage").loc[stage, "ms_per_request"]) for t in tables.values()]
        ax.bar(list(tables), heights, bottom=bottoms, label=stage)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    ax.set(ylabel="ms per request", title="Where a request's time goes")
    ax.legend(fontsize=8)
    return fig


# --- 3. a hang diagnosed: py-spy dump ----------------------------------------------------------


# py-spy's reading (ThreadDump, THREAD_ROLES, explain_thread, parse_py_spy_dump, py_spy_dump, thread_table)
# lives in labs/core/debug/pyspy.py, since Lab 10 reads a hung server with it too; this lab's notebook
# calls it through this module.


# --- 4. the decode roofline --------------------------------------------------------------------


def measure_memory_bandwidth(num_bytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """This machine's memory bandwidth in GB/s: the best of `repeats` copies of a large tensor.

    Why a copy: like a decode step it streams far more memory than the caches hold (2 * num_bytes move)."""
    import torch

    src = torch.ones(num_bytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * num_bytes / best / 1e9


def decode_roofline(llm: Any, batch_sizes: list[int], bandwidth_gbps: float, *, prompt_len: int = 32,
                    num_decode_steps: int = 12) -> pd.DataFrame:
    """Measured decode steps vs the memory-bandwidth bound, one row per batch size.

    For each batch size, `batch_size` requests of `prompt_len` token ids are prefilled in one
    step; each step after it decodes one token per request (`ignore_eos`). step_ms is the fastest
    of those (other processes on a busy machine stretch some steps; the fastest is the engine's
    own cost), median_step_ms the typical one. A decode step reads every weight once (shared by
    the batch) plus each request's KV cache (prompt_len + num_decode_steps / 2 tokens on average),
    so bound_step_ms = bytes / bandwidth and fraction_of_bound = bound_step_ms / step_ms (1: the limit).
    """
    from vllm import SamplingParams

    engine, rows = llm.llm_engine, []
    weight_bytes, kv_per_token = vi.model_weight_bytes(llm), vi.kv_cache_bytes_per_token(llm)
    params = SamplingParams(temperature=0.0, max_tokens=num_decode_steps + 1, ignore_eos=True)
    for batch_size in batch_sizes:
        for i in range(batch_size):  # token ids: exact prompt lengths, no tokenizer in the timing
            prompt_token_ids = [(7 * i + j) % 1000 + 10 for j in range(prompt_len)]
            engine.add_request(f"roofline-{batch_size}-{i}", {"prompt_token_ids": prompt_token_ids}, params)
        engine.step()  # the prefill
        seconds = []
        while engine.has_unfinished_requests():
            start = time.perf_counter()
            engine.step()
            seconds.append(time.perf_counter() - start)
        step_s, median_s = min(seconds), statistics.median(seconds)
        bytes_per_step = weight_bytes + batch_size * kv_per_token * (prompt_len + num_decode_steps / 2)
        bound_s = bytes_per_step / (bandwidth_gbps * 1e9)
        rows.append({"batch_size": batch_size, "step_ms": 1e3 * step_s, "median_step_ms": 1e3 * median_s,
                     "tokens_per_s": batch_size / step_s, "MB_per_step": bytes_per_step / 1e6,
                     "bound_step_ms": 1e3 * bound_s, "bound_tokens_per_s": batch_size / bound_s,
                     "fraction_of_bound": bound_s / step_s})
    return pd.DataFrame(rows)


def plot_roofline(table: pd.DataFrame) -> Any:
    """Decode tokens/s by batch size: measured vs the memory-bandwidth bound (log scale)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(table["batch_size"], table["bound_tokens_per_s"], "--", label="memory-bandwidth bound")
    ax.plot(table["batch_size"], table["tokens_per_s"], "o-", label="measured")
    ax.set(xlabel="batch size (requests decoding together)", ylabel="decode tokens/s", yscale="log",
           title="Decode vs the memory roofline")
    ax.legend()
    return fig
