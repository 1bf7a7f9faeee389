"""Lab 3 on the live engine: chunked prefill, preemption and recompute, static vs continuous batching.

The engine needs its own settings (labs.lab3_continuous_batching.batching.SCARCE_KV: 11 usable KV blocks, 4 running
requests, a 64-token budget), so it runs in a fresh process: a second engine in the test process
would share vLLM's global distributed state with conftest's session engine, and freeing it would
tear that state down under the other tests. `record_live_run` is what that process runs; it
writes everything the engine did to JSON, and the tests below check it here.

The expected numbers come from the traces themselves (prompt lengths, max_tokens, the engine's own
limits), never from a recorded run, so a change in vLLM's scheduling shows up as a failure.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from labs.lab3_continuous_batching.batching import (SCARCE_KV, plot_steps, request_summary, steps_table,
                                                    summarize_batching)
from labs.lab3_continuous_batching.traces import TraceRequest, equal_lengths_trace, mixed_lengths_trace, preemption_scenario
from labs.lab3_continuous_batching.costs import expected_steps, running_per_step
from labs.core.live import StepObservation
from labs.core.predict import NO_PREDICTION, check_choice, check_number
from labs.lab3_continuous_batching.predictions import preemptions, recompute_tax
from tests.fresh_process import record_in_fresh_process

pytestmark = pytest.mark.engine

BATCH_SIZE = SCARCE_KV["max_num_seqs"]
TINY_TRACES = {"equal lengths": equal_lengths_trace(2 * BATCH_SIZE, max_tokens=4, prompt_len=8),
               "mixed lengths": mixed_lengths_trace(BATCH_SIZE, 2, long=12, short=2, prompt_len=8)}


def record_live_run(out_path: str) -> None:
    """Engine side (a fresh process): the preemption scenario, observed step by step, then a tiny
    static-vs-continuous comparison on the same engine; everything to `out_path` as JSON."""
    from labs.core import vllm_internals as vi
    from labs.lab3_continuous_batching.batching import compare_batching
    from labs.core.engine import free_llm, make_llm
    from labs.core.live import EngineObserver
    from labs.lab3_continuous_batching.predictions import first_preemption

    llm = make_llm("tiny-phrasebook", inspectable=True, verbose=False, **SCARCE_KV)
    observer = EngineObserver(llm)
    for req in preemption_scenario():
        observer.add_request(req.request_id, req.prompt_token_ids, req.sampling_params())
    first = first_preemption(observer)  # steps up to the first preemption (the notebook's prediction)
    steps_to_first = len(observer.history)
    observer.run()
    again = first_preemption(observer)  # on a finished run: reads the history, steps nothing
    record = {
        "first": dataclasses.asdict(first) if first else None,
        "again": dataclasses.asdict(again) if again else None,
        "steps_to_first": steps_to_first,
        "output_lens": {rid: len(out.outputs[0].token_ids) for rid, out in observer.outputs.items()},
        "limits": dataclasses.asdict(vi.scheduler_limits(llm)),
        "kv_cache": dataclasses.asdict(vi.kv_cache_snapshot(llm)),
        "unfinished_after_run": observer.has_unfinished_requests(),
        "history": [dataclasses.asdict(obs) for obs in observer.history],
        "outputs": {rid: {"prompt_token_ids": list(out.prompt_token_ids),
                          "output_token_ids": list(out.outputs[0].token_ids)} for rid, out in observer.outputs.items()},
        "comparison": compare_batching(llm, TINY_TRACES).to_dict(orient="records"),
    }
    Path(out_path).write_text(json.dumps(record), encoding="utf-8")
    free_llm(llm)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    record = record_in_fresh_process(record_live_run, tmp_path_factory.mktemp("lab3") / "live.json")
    record["history"] = [StepObservation(**obs) for obs in record["history"]]
    record["comparison"] = pd.DataFrame(record["comparison"])
    return record


@pytest.fixture(scope="module")
def trace() -> list[TraceRequest]:
    return preemption_scenario()


def test_engine_runs_with_the_scarce_limits(live: dict[str, Any]) -> None:
    limits, kv = live["limits"], live["kv_cache"]
    assert limits["max_num_seqs"] == SCARCE_KV["max_num_seqs"]
    assert limits["max_num_batched_tokens"] == SCARCE_KV["max_num_batched_tokens"]
    assert limits["enable_chunked_prefill"]
    assert kv["num_blocks"] == SCARCE_KV["num_gpu_blocks_override"] - 1 and kv["block_size"] == SCARCE_KV["block_size"]


def test_every_request_finishes_with_exactly_max_tokens(live: dict[str, Any], trace: list[TraceRequest]) -> None:
    assert not live["unfinished_after_run"]
    for req in trace:
        out = live["outputs"][req.request_id]
        assert out["prompt_token_ids"] == req.prompt_token_ids
        assert len(out["output_token_ids"]) == req.max_tokens


def test_steps_respect_the_token_budget_and_the_batch_size(live: dict[str, Any]) -> None:
    limits = live["limits"]
    for obs in live["history"]:
        assert sum(obs.num_scheduled_tokens.values()) <= limits["max_num_batched_tokens"], obs
        assert len(obs.num_scheduled_tokens) <= limits["max_num_seqs"], obs
        assert len(obs.running_ids) <= limits["max_num_seqs"], obs
    assert live["history"][-1].num_free_blocks == live["kv_cache"]["num_blocks"]


def test_chunked_prefill_splits_long_prompts(live: dict[str, Any], trace: list[TraceRequest]) -> None:
    """A prompt longer than the budget is prefilled over several steps; the chunks add up to it."""
    budget = SCARCE_KV["max_num_batched_tokens"]
    summary = request_summary(live["history"], trace)
    long_prompts = [req for req in trace if len(req.prompt_token_ids) > budget]
    assert long_prompts
    for req in long_prompts:
        chunks = [int(n) for n in summary.loc[req.request_id, "prefill_chunks"].split("+")]
        assert len(chunks) >= 2 and max(chunks) <= budget, chunks
        assert sum(chunks) == len(req.prompt_token_ids), chunks


def test_scheduled_tokens_add_up_to_prompt_plus_outputs_minus_one(
        live: dict[str, Any], trace: list[TraceRequest]) -> None:
    """After its last (re)start a request computes every token but its last sampled one.

    Tokens computed before a preemption are thrown away, so those are counted from the last
    preemption on; for a request never preempted that is its whole life.
    """
    for req in trace:
        since_last_start = 0
        for obs in live["history"]:
            if req.request_id in obs.preempted_ids:
                since_last_start = 0
            since_last_start += obs.num_scheduled_tokens.get(req.request_id, 0)
        assert since_last_start == len(req.prompt_token_ids) + req.max_tokens - 1, req.request_id


def test_scarce_blocks_cause_preemption_then_recompute(live: dict[str, Any], trace: list[TraceRequest]) -> None:
    history = live["history"]
    preempted = {rid for obs in history for rid in obs.preempted_ids}
    assert preempted, "11 blocks for 4 running requests of up to 180 tokens must run out"
    summary = request_summary(history, trace)
    for rid in preempted:
        row = summary.loc[rid]
        assert row["num_preemptions"] >= 1 and row["recompute_chunks"], row
        step = next(o.step for o in history if rid in o.preempted_ids)
        computed = sum(o.num_scheduled_tokens.get(rid, 0) for o in history if o.step < step)
        first_recompute = [int(n) for n in row["recompute_chunks"].split(" | ")[0].split("+")]
        # all the tokens it held are prefilled again: the prompt, or C computed + 1 sampled
        assert sum(first_recompute) == max(row["num_prompt_tokens"], computed + 1)
        assert rid in next(o.waiting_ids for o in history if o.step == step)


def test_tables_and_plot_cover_every_step(live: dict[str, Any], trace: list[TraceRequest]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    history = live["history"]
    table = steps_table(history)
    assert list(table.index) == list(range(1, len(history) + 1))
    assert table["num_scheduled_tokens"].sum() == sum(sum(o.num_scheduled_tokens.values()) for o in history)
    fig = plot_steps(history, [req.request_id for req in trace])
    assert len(fig.axes) >= 3


def test_static_vs_continuous_gives_sane_numbers(live: dict[str, Any]) -> None:
    """Both modes run every request to max_tokens; static batches run back to back. No speed asserts."""
    results = live["comparison"]
    for name, tiny_trace in TINY_TRACES.items():
        for mode in ("static", "continuous"):
            rows = results.query("trace == @name and mode == @mode").set_index("request_id")
            assert sorted(rows.index) == sorted(r.request_id for r in tiny_trace)
            assert all(rows.loc[r.request_id, "num_output_tokens"] == r.max_tokens for r in tiny_trace)
            assert (rows["latency_s"] > 0).all() and (rows["finish_step"] >= 1).all()
        # a static batch (prompts prefilled in one step, first token included) lasts its longest request
        batches = [tiny_trace[i:i + BATCH_SIZE] for i in range(0, len(tiny_trace), BATCH_SIZE)]
        static = results.query("trace == @name and mode == 'static'")
        assert static["finish_step"].max() == sum(max(r.max_tokens for r in b) for b in batches)
    summary = summarize_batching(results)
    assert (summary.xs("static", level="mode")["speedup_vs_static"] == 1).all()
    totals = summary["num_output_tokens"].unstack("mode")
    assert (totals["static"] == totals["continuous"]).all()
    assert (summary["throughput_tok_s"] > 0).all()


def test_step_counts_are_machine_independent(live: dict[str, Any]) -> None:
    """Lab 3's figure that holds on any machine: the engine steps each mode takes follow from the trace.

    Continuous batching admits a waiting request the step after a slot frees; each running request
    gets one token per step. The mixed trace's step ratio is what the lab reports instead of a
    throughput target (throughput also depends on how a step's cost grows with the batch).
    """
    results = live["comparison"]
    for name, tiny_trace in TINY_TRACES.items():
        for mode in ("static", "continuous"):
            rows = results[(results["trace"] == name) & (results["mode"] == mode)]
            assert rows["finish_step"].max() == expected_steps(tiny_trace, mode, BATCH_SIZE), (name, mode)
            running = running_per_step(rows)
            assert running.max() <= BATCH_SIZE, (name, mode, running)
    mixed = {m: expected_steps(TINY_TRACES["mixed lengths"], m, BATCH_SIZE) for m in ("static", "continuous")}
    assert mixed["static"] / mixed["continuous"] > 1.5, mixed


# --- Lab 3's predictions: the first preemption and the recompute tax, from the same run ----------

def test_first_preemption_is_the_last_admitted_request_when_blocks_run_out(live: dict[str, Any]) -> None:
    history, first = live["history"], live["first"]
    assert first is not None and first == live["again"]
    assert live["steps_to_first"] == first["step"]  # first_preemption stepped exactly up to it
    step = first["step"]
    before = history[step - 2]  # the state the scheduler started the preemption step from
    # FCFS: the victim is the running request admitted last
    assert first["request_id"] == before.running_ids[-1]
    assert before.num_free_blocks == 0 and first["request_id"] in history[step - 1].preempted_ids
    assert not any(obs.preempted_ids for obs in history[:step - 1])
    rid = first["request_id"]
    assert first["num_computed_tokens"] == sum(o.num_scheduled_tokens.get(rid, 0) for o in history[:step - 1])
    wrong = check_choice("victim", "req-0", first["request_id"], "why", choices=("req-0", rid), quiet=True)
    assert wrong.right is False and "wrong" in wrong.message
    assert check_number("step", step + 3, step, "why", quiet=True).right is False
    none = check_choice("victim", None, first["request_id"], "why", quiet=True)
    assert none.right is None and NO_PREDICTION in none.message


def test_recompute_tax_counted_two_ways_agrees(live: dict[str, Any]) -> None:
    trace = preemption_scenario()
    tax = recompute_tax(live["history"], trace)
    assert live["output_lens"] == {req.request_id: req.max_tokens for req in trace}
    assert tax.preemptions and tax.tokens > 0
    # total scheduled - what each request needs == what each preempted request had computed
    assert tax.tokens == tax.lost_at_preemption
    assert tax.num_needed_tokens == sum(len(r.prompt_token_ids) + r.max_tokens - 1 for r in trace)
    assert tax.num_scheduled_tokens == sum(sum(o.num_scheduled_tokens.values()) for o in live["history"])
    # and against the recompute request_summary finds: each prefills what was lost + 1 sampled token (or the prompt)
    summary = request_summary(live["history"], trace)
    prompt_lens = {req.request_id: len(req.prompt_token_ids) for req in trace}
    seen: dict[str, int] = {}
    for p in preemptions(live["history"]):
        k = seen[p.request_id] = seen.get(p.request_id, -1) + 1
        segment = summary.loc[p.request_id, "recompute_chunks"].split(" | ")[k]
        assert sum(map(int, segment.split("+"))) == max(prompt_lens[p.request_id], p.num_computed_tokens + 1)
    assert 0 < tax.share < 1
    wrong = check_number("tax", 0, tax.tokens, "why", unit=" tokens", quiet=True)
    assert wrong.right is False and "(-100%)" in wrong.message
    assert check_number("tax", tax.tokens, tax.tokens, "why", quiet=True).right is True
    assert check_number("tax", None, tax.tokens, "why", quiet=True).right is None


def test_no_preemption_means_no_tax() -> None:
    trace = preemption_scenario(num_requests=1, max_tokens=2)
    rid = trace[0].request_id
    n = len(trace[0].prompt_token_ids)
    history = [StepObservation(1, {rid: n}, {}, [rid], [], [], [], {rid: [1, 2]}, 9, 0.0),
               StepObservation(2, {rid: 1}, {}, [], [], [], [rid], {}, 11, 0.0)]
    tax = recompute_tax(history, trace)
    assert (tax.tokens, tax.lost_at_preemption, tax.preemptions) == (0, 0, [])
