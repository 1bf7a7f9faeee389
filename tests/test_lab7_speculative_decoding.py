"""Lab 7 (labs/lab7_speculative_decoding/) against the real engine: n-gram speculative decoding on tiny-phrasebook.

One engine with speculative_config (n-gram, K = 3) runs in a fresh process (freeing an engine
tears down vLLM's process-wide state, which would break the session engine of other modules);
it runs both workloads in all three modes and writes every recorded step to JSON. The tests
check the recording against vLLM's own counters, vLLM's own drafter function, the verification
rule, the final outputs, and the predictions against the raw steps. No speed is asserted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from labs.core.predict import NO_PREDICTION
from labs.lab7_speculative_decoding import predictions
from labs.lab7_speculative_decoding.solution import propose_ngram
from labs.lab7_speculative_decoding.speculation import (NGRAM_CONFIG, WorkloadRun, comparison_table, request_contexts,
                                                        step_cost)
from tests.fresh_process import record_in_fresh_process

K = NGRAM_CONFIG["num_speculative_tokens"]
MAX_TOKENS = 40


def record_live_run(out_path: str) -> None:
    """Engine side (a fresh process): both workloads in every mode, every step, to `out_path` as JSON."""
    from vllm import SamplingParams

    from labs.core.engine import free_llm
    from labs.core.vllm_internals import model_runner, scheduler
    from labs.core.vllm_internals.spec_decode import spec_settings, vllm_ngram_propose
    from labs.lab7_speculative_decoding import speculation as spec

    llm = spec.make_spec_llm("tiny-phrasebook", verbose=False)
    workloads = {"repeating": spec.repeating_prompts(llm), "non-repeating": spec.non_repeating_prompts(llm)}
    _, runs = spec.compare_modes(llm, workloads, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), repeats=1)
    record = {"settings": spec_settings(llm).__dict__,
              "restored": {"drafter": "propose" not in vars(model_runner(llm).drafter),
                           "scheduler": not {"schedule", "update_from_output"} & set(vars(scheduler(llm)))},
              "runs": [run.to_dict() for run in runs.values()],
              "steps_table": spec.steps_table(runs[("repeating", "ngram")], llm.get_tokenizer()).to_dict("records"),
              # vLLM's n-gram function on each request's context before each step (numba: compiled here already)
              "vllm_proposals": [[vllm_ngram_propose(context, 2, 4, K) for _, context, _, _ in
                                  spec.request_contexts(runs[("repeating", "ngram")], i)] for i in range(3)]}
    Path(out_path).write_text(json.dumps(record), encoding="utf-8")
    free_llm(llm)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    record = record_in_fresh_process(record_live_run, tmp_path_factory.mktemp("lab7") / "live.json")
    record["runs"] = {(r["workload"], r["mode"]): WorkloadRun.from_dict(r) for r in record["runs"]}
    return record


def test_the_engine_speculates_as_configured(live: dict[str, Any]) -> None:
    settings = live["settings"]
    assert (settings["method"], settings["num_speculative_tokens"]) == ("ngram", K)
    assert (settings["prompt_lookup_min"], settings["prompt_lookup_max"]) == (2, 4)
    assert live["restored"] == {"drafter": True, "scheduler": True}, "the lab's wrappers must leave the engine as it was"


def test_speculation_is_lossless(live: dict[str, Any]) -> None:
    """Greedy verification keeps exactly the target's tokens, whatever the drafts: every mode, same output."""
    runs = live["runs"]
    for workload in ("repeating", "non-repeating"):
        plain = runs[(workload, "plain")].output_token_ids
        assert all(len(ids) > 3 for ids in plain)
        for mode in ("ngram", "always wrong"):
            assert runs[(workload, mode)].output_token_ids == plain, (workload, mode)


def test_plain_mode_decodes_one_token_per_step(live: dict[str, Any]) -> None:
    for workload in ("repeating", "non-repeating"):
        run = live["runs"][(workload, "plain")]
        assert run.draft_records() == [] and all(not s.draft_token_ids for s in run.steps)
        # the prefill step gives every request its first token, each later step one more
        assert len(run.steps) == max(map(len, run.output_token_ids))


def test_kept_tokens_follow_the_greedy_rule_and_make_the_output(live: dict[str, Any]) -> None:
    for run in live["runs"].values():
        for step in run.steps:
            for req_id, drafts in step.draft_token_ids.items():
                kept, accepted = step.sampled_token_ids[req_id], step.num_accepted(req_id)
                assert step.num_scheduled_tokens[req_id] == 1 + len(drafts)
                assert kept[:accepted] == drafts[:accepted] and len(kept) == accepted + 1
                if accepted < len(drafts):
                    assert kept[accepted] != drafts[accepted], "a rejected draft is replaced by the target's token"
        for i, output in enumerate(run.output_token_ids):  # the kept tokens, step after step, are the output
            req_ids = list(dict.fromkeys(r for s in run.steps for r in s.num_scheduled_tokens))
            kept = [t for s in run.steps for t in s.sampled_token_ids.get(req_ids[i], [])]
            assert kept[:len(output)] == output, (run.workload, run.mode, i)


def test_recorded_drafts_and_acceptance_equal_vllms_counters(live: dict[str, Any]) -> None:
    for run in live["runs"].values():
        if run.mode == "plain":
            continue
        records, counters = run.draft_records(), run.counters
        assert counters["num_drafts"] == len(records), (run.workload, run.mode)
        assert counters["num_draft_tokens"] == sum(d for d, _ in records)
        assert counters["num_accepted_tokens"] == sum(a for _, a in records)
        per_pos = [sum(a > i for _, a in records) for i in range(K)]
        assert counters["num_accepted_tokens_per_pos"] == per_pos


def test_live_ngram_drafts_are_vllms_proposal_on_the_context(live: dict[str, Any]) -> None:
    """Each draft the scheduler verified is what vLLM's n-gram function (and the rule) proposes on the
    request's tokens so far; the first step of a request (its prefill) had no draft to verify."""
    run = live["runs"][("repeating", "ngram")]
    checked = 0
    for i, proposals in enumerate(live["vllm_proposals"]):
        steps = request_contexts(run, i)
        assert len(steps) == len(proposals) and steps[0][2] == []
        for (_, context, drafts, _), proposal in zip(steps[1:], proposals[1:]):  # proposals[k]: on the tokens before step k
            assert drafts == proposal == propose_ngram(context, 2, 4, K, 2048)
            checked += 1
    assert checked >= 6


def test_the_repeating_text_saves_steps_and_the_other_does_not(live: dict[str, Any]) -> None:
    table = comparison_table(live["runs"]).set_index(["workload", "mode"])
    repeating = table.loc[("repeating", "ngram")]
    assert repeating.acceptance_rate > 0.6 and repeating.steps_saved >= 5, repeating.to_dict()
    assert repeating.mean_acceptance_length > 2
    non_repeating = table.loc[("non-repeating", "ngram")]
    assert non_repeating.draft_tokens == 0 and non_repeating.steps_saved == 0
    wrong = table.loc[("repeating", "always wrong")]
    assert wrong.accepted == 0 and wrong.steps_saved == 0 and wrong.draft_tokens > 0
    assert table["same_tokens_as_plain"].all()


def test_step_cost_groups_decode_steps_by_tokens_verified(live: dict[str, Any]) -> None:
    cost = step_cost(live["runs"]).set_index("tokens_per_request")
    assert {1, K + 1} <= set(cost.index) and (cost["median_step_ms"] > 0).all()
    assert cost.loc[1, "vs_one_token"] == pytest.approx(1.0)


def test_steps_table_shows_drafts_and_what_was_kept(live: dict[str, Any]) -> None:
    rows = live["steps_table"]
    assert rows[0]["tokens_computed"] > 50 and rows[0]["drafts"] == []  # the prefill step
    assert any(r["accepted"] == K and r["num_kept"] == K + 1 for r in rows), "some step kept K drafts + the bonus"
    assert all(r["num_kept"] == r["accepted"] + 1 for r in rows[1:])


# --- predictions -------------------------------------------------------------------------------


def test_accepted_per_draft_prediction(live: dict[str, Any]) -> None:
    run = live["runs"][("repeating", "ngram")]
    records = run.draft_records()
    actual = sum(a for _, a in records) / len(records)
    assert actual == pytest.approx(live["runs"][("repeating", "ngram")].counters["num_accepted_tokens"]
                                   / run.counters["num_drafts"])
    right = predictions.check_accepted_per_draft(actual, run, K, quiet=True)
    assert right.right is True and f"of them accepted all {K}" in right.message
    wrong = predictions.check_accepted_per_draft(actual - 1.5 if actual > 1.5 else actual + 1.5, run, K, quiet=True)
    assert wrong.right is False and "wrong by" in wrong.message
    assert predictions.check_accepted_per_draft(None, run, K, quiet=True).right is None


def test_drafts_proposed_prediction(live: dict[str, Any]) -> None:
    run = live["runs"][("non-repeating", "ngram")]
    drafted = sum(len(d) for s in run.steps for d in s.draft_token_ids.values())
    assert predictions.check_drafts_proposed(drafted, run, quiet=True).right is True
    assert predictions.check_drafts_proposed(drafted + 6, run, quiet=True).right is False
    none = predictions.check_drafts_proposed(None, run, quiet=True)
    assert none.right is None and NO_PREDICTION in none.message


def test_wrong_drafts_speed_prediction(live: dict[str, Any]) -> None:
    plain, wrong = live["runs"][("repeating", "plain")], live["runs"][("repeating", "always wrong")]
    actual = "slower" if wrong.seconds > plain.seconds else "faster"
    assert predictions.check_wrong_drafts_speed(actual, plain, wrong, quiet=True).right is True
    other = "faster" if actual == "slower" else "slower"
    assert predictions.check_wrong_drafts_speed(other, plain, wrong, quiet=True).right is False
    with pytest.raises(ValueError, match="not one of the choices"):
        predictions.check_wrong_drafts_speed("same", plain, wrong, quiet=True)
