"""Lab 10, part 1 on the real engine: the KV storm, its recompute tax, the knobs, and the predictions.

One in-process engine with 12 KV blocks (module-scoped) serves the burst once; every test reads
that run. The knobs are replayed through vLLM's real Scheduler with no model, which is shown first
to decide exactly as the live engine did. The server failures (hang, crash) are in
tests/test_lab10_failure_injection_server.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from labs.core.predict import NO_PREDICTION
from labs.lab10_failure_injection import kv_storm as ks
from labs.lab10_failure_injection.predictions import (KNOB_CHOICES, check_knob, check_num_preemptions,
                                                      check_recomputed_tokens, knob_that_ends_it)
from labs.core.paths import REPO_ROOT


@pytest.fixture(scope="module")
def run() -> Iterator[ks.StormRun]:
    from labs.core.engine import free_llm

    llm = ks.make_storm_engine(verbose=False)
    try:
        yield ks.run_storm(llm)
    finally:
        free_llm(llm)


@pytest.fixture(scope="module")
def knobs(run: ks.StormRun) -> Any:
    return ks.compare_knobs(run.trace)


@pytest.mark.engine
def test_the_burst_overflows_the_kv_cache_into_a_preemption_storm(run: ks.StormRun) -> None:
    history = run.observer.history
    assert run.num_preemptions >= 3, "the burst should preempt several times"
    assert len(history[0].running_ids) == ks.NUM_BURST, "vLLM admits the whole burst: every prompt fits at first"
    assert all(len(out.outputs[0].token_ids) == ks.MAX_TOKENS for out in run.observer.outputs.values())
    assert len(run.observer.outputs) == ks.NUM_BURST, "every request finishes despite the storm"
    assert min(o.num_free_blocks for o in history if o.preempted_ids) <= 1, "preemptions happen when blocks run out"


@pytest.mark.engine
def test_recompute_tax_from_scheduler_outputs_equals_the_schedulers_own_count(run: ks.StormRun) -> None:
    """Lab 3's tax (all scheduled - all needed) = num_computed_tokens at each preemption, read inside vLLM."""
    assert run.tax.tokens > 0
    assert run.tax.tokens == run.engine_recomputed_tokens
    assert sum(len(v) for v in run.lost_tokens.values()) == run.num_preemptions
    assert run.tax.lost_at_preemption == run.engine_recomputed_tokens


@pytest.mark.engine
def test_vllms_scheduler_without_a_model_decides_exactly_as_the_engine(run: ks.StormRun) -> None:
    replay = ks.run_standalone(run.trace)
    live = [o.num_scheduled_tokens for o in run.observer.history]
    standalone = [{rid: n for rid, n in s.num_scheduled_tokens.items()} for s in replay.steps]
    assert standalone == live, "the standalone scheduler should grant the same tokens in every step"
    assert [sorted(s.preempted_req_ids) for s in replay.steps] == [sorted(o.preempted_ids) for o in run.observer.history]
    assert replay.recomputed_tokens == run.engine_recomputed_tokens


@pytest.mark.engine
def test_only_max_num_seqs_ends_the_storm(knobs: Any) -> None:
    assert knobs.loc["as configured", "preemptions"] > 0
    assert knobs.loc["max_num_seqs 8 -> 3", "preemptions"] == 0
    assert knobs.loc["max_num_batched_tokens 256 -> 64", "preemptions"] > 0
    assert knobs.loc["KV blocks 12 -> 18", "preemptions"] > 0
    assert (knobs["scheduled_minus_needed"] == knobs["recomputed_tokens"]).all()
    assert knobs.loc["max_num_seqs 8 -> 3", "steps"] > knobs.loc["as configured", "steps"], "fewer at once costs steps"


@pytest.mark.engine
def test_the_diagnosis_the_lab_prints(run: ks.StormRun) -> None:
    text = "\n".join(ks.explain_storm(run))
    assert f"Preemption storm: {run.num_preemptions} preemptions" in text
    assert f"Recompute tax: {run.tax.tokens} of {run.tax.num_scheduled_tokens} scheduled tokens" in text
    assert f"the engine's own count at each preemption says {run.engine_recomputed_tokens}" in text
    assert "for 11 usable blocks" in text and "max_num_seqs" in text


# --- predictions -------------------------------------------------------------------------------


@pytest.mark.engine
def test_preemption_prediction_against_the_live_run(run: ks.StormRun) -> None:
    assert check_num_preemptions(run.num_preemptions, run, quiet=True).right
    assert check_num_preemptions(run.num_preemptions + 1, run, quiet=True).right  # within 2
    wrong = check_num_preemptions(0, run, quiet=True)
    assert wrong.right is False and "wrong by" in wrong.message
    assert NO_PREDICTION in check_num_preemptions(None, run, quiet=True).message


@pytest.mark.engine
def test_recomputed_tokens_prediction_against_the_live_run(run: ks.StormRun) -> None:
    assert check_recomputed_tokens(run.tax.tokens, run, quiet=True).right
    assert check_recomputed_tokens(0, run, quiet=True).right is False
    assert check_recomputed_tokens(2 * run.tax.tokens, run, quiet=True).right is False


@pytest.mark.engine
def test_knob_prediction_against_vllms_scheduler(knobs: Any) -> None:
    assert knob_that_ends_it(knobs) == "max_num_seqs 8 -> 3"
    assert check_knob("max_num_seqs 8 -> 3", knobs, quiet=True).right
    for wrong in set(KNOB_CHOICES) - {"max_num_seqs 8 -> 3"}:
        assert check_knob(wrong, knobs, quiet=True).right is False
    with pytest.raises(ValueError):
        check_knob("a bigger GPU", knobs, quiet=True)


def test_the_command_line_names_the_three_failures() -> None:
    done = subprocess.run([sys.executable, "-m", "labs.lab10_failure_injection", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert all(name in done.stdout for name in ("kv-storm", "hang", "crash"))
