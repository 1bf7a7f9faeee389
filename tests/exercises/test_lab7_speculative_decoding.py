"""Grades Lab 7's exercises against vLLM's own code.

- propose_ngram: the numba function vLLM's `NgramProposer` runs for every request
  (`_find_longest_matched_ngram_and_propose_tokens`, vllm/v1/spec_decode/ngram_proposer.py) on
  random traces over small vocabularies (many repeats, ties between occurrences), hand-made
  traces, short contexts and contexts near max_model_len;
- verify_greedy: vLLM's `rejection_sample` (vllm/v1/sample/rejection_sampler.py, greedy path; the
  CPU's C++ kernel) on the same drafts, target argmaxes and bonus tokens, a batch at a time;
- acceptance_summary: `SpecDecodingStats.observe_draft` + `SpecDecodingLogging.log`
  (vllm/v1/spec_decode/metrics.py) on the same per-draft records.
Each check also fails tests/exercises/broken_lab7.py (the "grader catches" tests).

Runs the reference by default; `make grade LAB=7` (LABS_GRADE=learner) runs yours.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from labs.core.grading import load_implementation
from tests.exercises.mirror import assert_learner_mirrors_reference
from labs.core.vllm_internals.spec_decode import vllm_acceptance_summary, vllm_greedy_verify, vllm_ngram_propose

BROKEN = "tests.exercises.broken_lab7"
EXERCISE = "lab7_spec_decode"


@pytest.fixture(scope="module")
def impl() -> Any:
    return load_implementation(EXERCISE)


# --- 1. the n-gram proposal vs vLLM's NgramProposer function ------------------------------------

HAND_MADE = [  # (context, min_n, max_n, k, max_model_len)
    ([1, 2, 3, 4, 1, 2, 3, 9, 1, 2, 3], 2, 4, 3, 100),  # two occurrences of the suffix: the earliest wins
    ([5, 6, 7, 8, 5, 6, 7, 8], 2, 4, 3, 100),  # the longest n (4) beats shorter matches
    ([1, 2, 1, 2, 1, 2], 2, 2, 5, 100),  # overlapping occurrences; drafts run to the context's end
    ([7, 7, 7, 7], 1, 3, 2, 100),  # the occurrence overlaps the suffix itself
    ([1, 2, 3], 2, 3, 3, 100),  # no earlier occurrence
    ([4], 2, 3, 3, 100),  # shorter than min_n
    ([1, 2, 9, 1, 2], 2, 3, 3, 6),  # one slot left before max_model_len
    ([1, 2, 9, 1, 2], 2, 3, 3, 5),  # no slot left
    ([3, 1, 2, 8, 8, 1, 2], 3, 4, 3, 100),  # a 2-gram matches, but min_n is 3
]


def random_traces(seed: int, count: int) -> list[tuple[list[int], int, int, int, int]]:
    """Random contexts over 2..6 token ids (so suffixes repeat often), random lookup settings."""
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        vocab = rng.randint(2, 6)
        context = [rng.randrange(vocab) for _ in range(rng.randint(1, 40))]
        min_n = rng.randint(1, 4)
        max_n = rng.randint(min_n, 6)
        k = rng.randint(1, 6)
        max_model_len = len(context) + rng.choice([0, 1, 2, 50])
        cases.append((context, min_n, max_n, k, max_model_len))
    return cases


def check_ngram(impl: Any, cases: list[tuple[list[int], int, int, int, int]]) -> None:
    for context, min_n, max_n, k, max_model_len in cases:
        expected = vllm_ngram_propose(context, min_n, max_n, k, max_model_len)
        got = list(impl.propose_ngram(list(context), min_n, max_n, k, max_model_len))
        assert got == expected, (f"propose_ngram differs from vLLM's NgramProposer: context {context}, "
                                 f"prompt_lookup_min={min_n}, prompt_lookup_max={max_n}, k={k}, "
                                 f"max_model_len={max_model_len}: you propose {got}, vLLM proposes {expected}")


def test_propose_ngram_hand_made(impl: Any) -> None:
    check_ngram(impl, HAND_MADE)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_propose_ngram_matches_vllm_on_random_traces(impl: Any, seed: int) -> None:
    check_ngram(impl, random_traces(seed, 400))


def test_grader_catches_the_latest_occurrence_winning() -> None:
    with pytest.raises(AssertionError, match="differs from vLLM's NgramProposer"):
        check_ngram(load_implementation(EXERCISE, BROKEN), HAND_MADE)


# --- 2. greedy verification vs vLLM's rejection sampler ------------------------------------------


def random_batch(seed: int, batch_size: int, k: int) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Drafts that agree with the target for a random prefix, then may differ; some requests have none."""
    rng = random.Random(seed)
    drafts, argmax, bonus = [], [], []
    for _ in range(batch_size):
        n = rng.randint(0, k)
        target = [rng.randrange(50) for _ in range(n)]
        agree = rng.randint(0, n)
        draft = target[:agree] + [rng.randrange(50) for _ in range(n - agree)]  # may agree by chance, too
        drafts.append(draft)
        argmax.append(target)
        bonus.append(rng.randrange(50))
    return drafts, argmax, bonus


def check_verify(impl: Any, drafts: list[list[int]], argmax: list[list[int]], bonus: list[int]) -> None:
    expected = vllm_greedy_verify(drafts, argmax, bonus, vocab_size=64)
    for i, (d, a, b) in enumerate(zip(drafts, argmax, bonus)):
        got = list(impl.verify_greedy(list(d), list(a), b))
        assert got == expected[i], (f"verify_greedy differs from vLLM's rejection sampler: drafts {d}, "
                                    f"target argmax {a}, bonus {b}: you keep {got}, vLLM keeps {expected[i]}")


def test_verify_greedy_by_hand(impl: Any) -> None:
    check_verify(impl, [[5, 6, 7], [1, 2], [], [9, 9]], [[5, 6, 8], [1, 2], [], [3, 9]], [3, 4, 8, 2])


@pytest.mark.parametrize("seed,k", [(0, 1), (1, 3), (2, 5), (3, 8)])
def test_verify_greedy_matches_vllm_rejection_sampler(impl: Any, seed: int, k: int) -> None:
    check_verify(impl, *random_batch(seed, 64, k))


def test_grader_catches_a_missing_recovered_token() -> None:
    with pytest.raises(AssertionError, match="differs from vLLM's rejection sampler"):
        check_verify(load_implementation(EXERCISE, BROKEN), *random_batch(1, 64, 3))


# --- 3. acceptance figures vs vLLM's SpecDecodingStats / SpecDecodingLogging ---------------------


def random_records(seed: int, count: int, k: int) -> list[tuple[int, int]]:
    """Per-draft records; drafts shorter than K happen (the context ran out, max_model_len)."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        drafted = rng.randint(1, k)
        records.append((drafted, rng.randint(0, drafted)))
    return records


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


def check_summary(impl: Any, records: list[tuple[int, int]], k: int) -> None:
    expected = vllm_acceptance_summary(records, k)
    got = impl.acceptance_summary(list(records), k)
    for key in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"):
        assert got[key] == expected[key], f"{key} differs from vLLM's SpecDecodingStats: {got[key]} vs {expected[key]}"
    for key in ("acceptance_rate", "mean_acceptance_length"):
        assert same(got[key], expected[key]), \
            f"{key} differs from vLLM's SpecDecodingLogging: you say {got[key]!r}, vLLM says {expected[key]!r}"
    assert len(got["per_position_acceptance_rate"]) == k
    for i, (g, e) in enumerate(zip(got["per_position_acceptance_rate"], expected["per_position_acceptance_rate"])):
        assert same(g, e), f"per-position acceptance rate at position {i} differs from vLLM's: {g!r} vs {e!r}"


def test_acceptance_summary_by_hand(impl: Any) -> None:
    check_summary(impl, [(3, 2), (3, 3), (2, 0)], 3)
    got = impl.acceptance_summary([(3, 2), (3, 3), (2, 0)], 3)
    assert got["acceptance_rate"] == pytest.approx(5 / 8) and got["mean_acceptance_length"] == pytest.approx(1 + 5 / 3)


@pytest.mark.parametrize("seed,count,k", [(0, 1, 1), (1, 20, 3), (2, 300, 5)])
def test_acceptance_summary_matches_vllm(impl: Any, seed: int, count: int, k: int) -> None:
    check_summary(impl, random_records(seed, count, k), k)


def test_acceptance_summary_without_drafts_is_nan_as_vllm_logs(impl: Any) -> None:
    check_summary(impl, [], 3)


def test_grader_catches_a_rate_over_k_slots() -> None:
    with pytest.raises(AssertionError, match="acceptance_rate differs from vLLM's SpecDecodingLogging"):
        check_summary(load_implementation(EXERCISE, BROKEN), random_records(1, 20, 3), 3)


def test_learner_file_mirrors_the_reference() -> None:
    learner, _, public = assert_learner_mirrors_reference(EXERCISE, {"propose_ngram", "verify_greedy", "acceptance_summary"})
    assert set(public) == {"propose_ngram", "verify_greedy", "acceptance_summary"}
    for name in public:
        with pytest.raises(NotImplementedError):
            getattr(learner, name)(*_dummy_args(name))


def _dummy_args(name: str) -> list[Any]:
    return {"propose_ngram": [[1, 2], 1, 2, 3, 10], "verify_greedy": [[1], [1], 2],
            "acceptance_summary": [[(1, 1)], 3]}[name]
