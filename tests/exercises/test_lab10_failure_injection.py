"""Grades Lab 10's exercises against vLLM's own scheduler and states captured from a real vLLM server.

- tokens_lost_to_preemption: bursts played through vLLM 0.32.0's real `Scheduler` (standalone, no
  model: `labs.core.vllm_internals.failures.run_burst`); the truth is each request's
  `num_computed_tokens` read inside vLLM's `Scheduler._preempt_request` just before it zeroes it,
  and `Request.num_preemptions`; the learner sees only the `SchedulerOutput`s;
- min_kv_blocks_without_preemption: random bursts; with the learner's pool vLLM's scheduler must
  admit the whole burst in step 1 and never preempt, and with one block less it must not manage;
- classify_server_state: the states of a real vLLM server that was made to stream, queue, hang
  (its worker paused) and crash (its worker killed), recorded by
  `python -m labs.lab10_failure_injection record-states`
  (labs/lab10_failure_injection/recorded_server_states.json; tests/test_lab10_failure_injection.py
  captures them again live), and edge cases.
Each check also fails tests/exercises/broken_lab10.py (the "grader catches" tests).

Runs the reference by default; `make grade LAB=10` (LABS_GRADE=learner) runs yours.
"""

from __future__ import annotations

import random
from functools import cache
from typing import Any

import pytest

from labs.core.grading import load_implementation
from labs.core.models.resolve import resolve_model
from labs.core.vllm_internals.failures import BurstRun, run_burst
from labs.lab10_failure_injection.scenarios import RECORDED_STATES, load_states

BROKEN = "tests.exercises.broken_lab10"
BLOCK_SIZE = 32


@pytest.fixture(scope="module")
def impl() -> Any:
    return load_implementation("lab10_failures")


def prompt(index: int, num_tokens: int) -> list[int]:
    return [10 + (index * 131 + 7 * i) % 4000 for i in range(num_tokens)]


def burst_run(prompt_lens: tuple[int, ...], max_tokens: tuple[int, ...], **limits: int) -> BurstRun:
    ids = [f"r{i}" for i in range(len(prompt_lens))]
    return run_burst(resolve_model().path, {rid: prompt(i, p) for i, (rid, p) in enumerate(zip(ids, prompt_lens))},
                     dict(zip(ids, max_tokens)), block_size=BLOCK_SIZE, **limits)


# --- 1. tokens lost to preemption ------------------------------------------------------------

# (prompt lengths, outputs, scheduler limits): storms of different shapes, chunked prefill included.
STORMS = [
    ((24,) * 8, (48,) * 8, dict(num_blocks=12, max_num_seqs=8, max_num_batched_tokens=256)),
    ((24,) * 10, (96,) * 10, dict(num_blocks=12, max_num_seqs=10, max_num_batched_tokens=256)),
    ((40, 60, 80, 100, 120, 140), (40,) * 6, dict(num_blocks=12, max_num_seqs=4, max_num_batched_tokens=64)),
    ((30, 90, 20, 70, 50), (60, 20, 90, 30, 70), dict(num_blocks=10, max_num_seqs=5, max_num_batched_tokens=128)),
]


@cache
def storm(index: int) -> BurstRun:
    lens, outs, limits = STORMS[index]
    return burst_run(lens, outs, **limits)


def check_tokens_lost(impl: Any) -> None:
    preempted_twice = False
    for index in range(len(STORMS)):
        run = storm(index)
        assert run.total_preemptions > 0, f"storm {index} should preempt (a grader case that tests nothing)"
        got = impl.tokens_lost_to_preemption([dict(s.num_scheduled_tokens) for s in run.steps],
                                             [set(s.preempted_req_ids) for s in run.steps])
        truth = {rid: tokens for rid, tokens in run.lost_tokens.items()}
        preempted_twice |= any(len(v) > 1 for v in truth.values())
        assert {rid: len(v) for rid, v in got.items()} == {rid: n for rid, n in run.num_preemptions.items() if n}, \
            f"storm {index}: preemptions per request differ from vLLM's Request.num_preemptions"
        assert got == truth, (f"storm {index}: vLLM's scheduler had computed {truth} tokens of these requests "
                              f"when it preempted them; you said {got}")
    assert preempted_twice, "no grader case preempts a request twice"


def test_tokens_lost_to_preemption_match_vllms_scheduler(impl: Any) -> None:
    check_tokens_lost(impl)


def test_grader_premise_the_recompute_tax_is_what_was_scheduled_beyond_the_need() -> None:
    """vLLM's count at preemption time equals all scheduled minus what the requests needed (Lab 3's tax)."""
    for index, (lens, outs, _) in enumerate(STORMS):
        run = storm(index)
        scheduled = sum(sum(s.num_scheduled_tokens.values()) for s in run.steps)
        assert scheduled - sum(p + m - 1 for p, m in zip(lens, outs)) == run.recomputed_tokens


def test_grader_catches_counting_from_arrival() -> None:
    with pytest.raises(AssertionError, match="when it preempted them"):
        check_tokens_lost(load_implementation("lab10_failures", BROKEN))


# --- 2. the smallest KV pool for a burst ------------------------------------------------------


def bursts(seed: int = 10, count: int = 6) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    rng = random.Random(seed)
    out = [((24,) * 8, (48,) * 8), ((100, 10), (5, 80))]  # equal requests; a short one ending early
    for _ in range(count - len(out)):
        n = rng.randint(2, 7)
        out.append((tuple(rng.randint(5, 120) for _ in range(n)), tuple(rng.randint(1, 90) for _ in range(n))))
    return out


def served_together(lens: tuple[int, ...], outs: tuple[int, ...], num_blocks: int) -> bool:
    """vLLM's scheduler admits the whole burst in step 1 and never preempts, with `num_blocks`."""
    run = burst_run(lens, outs, num_blocks=num_blocks, max_num_seqs=len(lens), max_num_batched_tokens=max(sum(lens), 64))
    return len(run.steps[0].num_scheduled_tokens) == len(lens) and run.total_preemptions == 0


def check_min_blocks(impl: Any) -> None:
    for lens, outs in bursts():
        n = impl.min_kv_blocks_without_preemption(list(lens), list(outs), BLOCK_SIZE)
        assert served_together(lens, outs, n), (
            f"burst prompts={lens} outputs={outs}: with num_gpu_blocks={n} vLLM's scheduler preempts or cannot "
            "admit every request in step 1")
        assert not served_together(lens, outs, n - 1), (
            f"burst prompts={lens} outputs={outs}: vLLM's scheduler also serves it with {n - 1} blocks: "
            f"{n} is not the smallest")


def test_min_kv_blocks_match_vllms_scheduler(impl: Any) -> None:
    check_min_blocks(impl)


def test_grader_catches_a_pool_sized_for_the_end() -> None:
    with pytest.raises(AssertionError, match="vLLM's scheduler"):
        check_min_blocks(load_implementation("lab10_failures", BROKEN))


# --- 3. a server's state from outside ---------------------------------------------------------


def edge_cases() -> list[tuple[dict[str, float] | None, dict[str, float] | None, dict[str, bool], str]]:
    idle = {"vllm:generation_tokens_total": 10.0, "vllm:prompt_tokens_total": 4.0, "vllm:num_preemptions_total": 0.0,
            "vllm:num_requests_running": 0.0, "vllm:num_requests_waiting": 0.0}
    up = dict.fromkeys(("api_server", "engine_core", "worker"), True)
    preempting = {**idle, "vllm:generation_tokens_total": 50.0, "vllm:num_preemptions_total": 3.0,
                  "vllm:num_requests_running": 2.0}
    return [(idle, dict(idle), up, "running"),  # idle is fine
            (idle, None, up, "crashed"),  # /metrics stopped answering
            (idle, dict(idle), {**up, "worker": False}, "crashed"),
            (idle, preempting, up, "overloaded"),  # tokens move, but with preemptions
            ({**idle, "vllm:num_requests_waiting": 1.0}, {**idle, "vllm:num_requests_waiting": 1.0}, up, "hung")]


def check_classifier(impl: Any) -> None:
    states = load_states(RECORDED_STATES)
    assert {s.label for s in states} == {"running", "overloaded", "hung", "crashed"}
    for state in states:
        got = impl.classify_server_state(state.before, state.after, state.processes)
        assert got == state.label, (f"a real vLLM server that was {state.label} (before={state.before}, "
                                    f"after={state.after}, processes={state.processes}): you said {got!r}")
    for before, after, processes, label in edge_cases():
        got = impl.classify_server_state(before, after, processes)
        assert got == label, f"before={before} after={after} processes={processes}: {label!r}, you said {got!r}"


def test_classify_server_state_on_a_real_servers_states(impl: Any) -> None:
    check_classifier(impl)


def test_grader_catches_trusting_liveness() -> None:
    with pytest.raises(AssertionError, match="a real vLLM server that was hung"):
        check_classifier(load_implementation("lab10_failures", BROKEN))
