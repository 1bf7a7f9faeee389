"""Grades Lab 8's exercises against xgrammar's and vLLM's own code.

- pack_token_bitmask: the bitmask xgrammar's `GrammarMatcher.fill_next_token_bitmask` writes for
  real grammar states (tiny-phrasebook's tokenizer; a JSON schema, a regex, a choice list compiled
  as vLLM's XgrammarBackend compiles them; the model vocabulary as is and padded past the
  tokenizer), and `xgrammar.testing.bool_mask_to_bitmask` on random sets;
- allowed_token_ids / num_allowed_tokens: xgrammar's own reader `_get_masked_tokens_from_bitmask`
  on those rows, random rows and vLLM's all-ones "no constraint" row (`_full_mask`);
- apply_grammar_bitmask: vLLM 0.32.0's `apply_grammar_bitmask` (vllm/v1/structured_output/utils.py,
  which calls `xgrammar.apply_token_bitmask_inplace`) on the same logits: a batch in another order
  than the bitmask, an unconstrained request, bf16 and fp32, a padded vocabulary;
- with the live engine: the bitmasks the scheduler built for the lab's runs, step by step.
Each check also fails tests/exercises/broken_lab8.py (the "grader catches" tests).

Runs the reference by default; `make grade LAB=8` (LABS_GRADE=learner) runs yours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from labs.core.grading import load_implementation
from tests.exercises.mirror import assert_learner_mirrors_reference
from labs.core.vllm_internals.structured_output import (
    vllm_apply_grammar_bitmask,
    xgrammar_matcher,
    xgrammar_next_bitmask,
    xgrammar_rejected_token_ids,
)
from labs.lab8_structured_outputs import structured as st

BROKEN = "tests.exercises.broken_lab8"
MODEL_VOCAB = 4096  # tiny-phrasebook's config.vocab_size (= its tokenizer)
PADDED_VOCAB = 4100  # as a model whose embedding is padded past its tokenizer (not a multiple of 32)


@pytest.fixture(scope="module")
def impl() -> Any:
    return load_implementation("lab8_structured")


@pytest.fixture(scope="module")
def hf_tokenizer(model_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def grammar_states(tokenizer: Any, vocab_size: int) -> list[tuple[str, np.ndarray]]:
    """(where, xgrammar's bitmask row) along a valid answer of each constraint, token by token."""
    answers = ((dict(json_schema=json.dumps(st.PHRASE_SCHEMA)), '{"zh": "早上好。"}'),
               (dict(regex=st.PHONE_REGEX), "411-7111"), (dict(choice=st.CHOICES), "晚安。"))
    states = []
    for constraint, answer in answers:
        matcher = xgrammar_matcher(tokenizer, vocab_size, **constraint)
        token_ids = tokenizer.encode(answer, add_special_tokens=False)
        for i, token_id in enumerate([*token_ids, None]):
            where = f"{next(iter(constraint))} after {tokenizer.decode(token_ids[:i])!r} (vocab {vocab_size})"
            states.append((where, xgrammar_next_bitmask(matcher, vocab_size)))
            if token_id is not None:
                assert matcher.accept_token(token_id), where
    return states


def xgrammar_allowed(row: np.ndarray, vocab_size: int) -> list[int]:
    rejected = set(xgrammar_rejected_token_ids(row, vocab_size))
    return [i for i in range(vocab_size) if i not in rejected]


def without_padding_bits(row: np.ndarray, vocab_size: int) -> np.ndarray:
    """The row with the bits past vocab_size cleared: xgrammar leaves them 0 or 1, no token reads them."""
    row = row.copy()
    if vocab_size % 32:
        row[-1] &= np.int32((1 << (vocab_size % 32)) - 1)
    return row


# --- 1. pack a set of allowed ids --------------------------------------------------------------


def check_pack(impl: Any, tokenizer: Any) -> None:
    for vocab_size in (MODEL_VOCAB, PADDED_VOCAB):
        for where, expected in grammar_states(tokenizer, vocab_size):
            allowed = xgrammar_allowed(expected, vocab_size)
            got = np.asarray(impl.pack_token_bitmask(allowed, vocab_size))
            assert got.dtype == np.int32 and got.shape == expected.shape, \
                f"pack_token_bitmask: shape {got.shape} {got.dtype}, xgrammar's is {expected.shape} int32"
            got, expected = without_padding_bits(got, vocab_size), without_padding_bits(expected, vocab_size)
            diff = np.flatnonzero(got != expected)
            assert not diff.size, \
                f"pack_token_bitmask differs from xgrammar's bitmask for {where} ({len(allowed)} allowed): word " \
                f"{diff[0]} is {int(got[diff[0]]) & 0xFFFFFFFF:#010x}, xgrammar wrote {int(expected[diff[0]]) & 0xFFFFFFFF:#010x}"
    import xgrammar as xgr

    rng = np.random.default_rng(0)
    for vocab_size, density in ((64, 0.5), (MODEL_VOCAB, 0.01), (MODEL_VOCAB, 0.9), (1024, 0.0), (1024, 1.0)):
        mask = rng.random(vocab_size) < density
        mask[31] = density > 0  # the sign bit of word 0
        expected = xgr.testing.bool_mask_to_bitmask(torch.from_numpy(mask).reshape(1, -1))[0].numpy()
        got = np.asarray(impl.pack_token_bitmask(np.flatnonzero(mask).tolist(), vocab_size))
        assert np.array_equal(got, expected), \
            f"pack_token_bitmask of {mask.sum()} random ids of {vocab_size} differs from xgrammar's bool_mask_to_bitmask"
    with pytest.raises(ValueError):
        impl.pack_token_bitmask([vocab_size], vocab_size)


def test_pack_matches_xgrammar(impl: Any, hf_tokenizer: Any) -> None:
    check_pack(impl, hf_tokenizer)


def test_grader_catches_a_reversed_bit_order(hf_tokenizer: Any) -> None:
    with pytest.raises(AssertionError, match="differs from xgrammar's bitmask"):
        check_pack(load_implementation("lab8_structured", BROKEN), hf_tokenizer)


# --- 3. read a bitmask row ---------------------------------------------------------------------


def check_allowed(impl: Any, tokenizer: Any) -> None:
    rng = np.random.default_rng(1)
    rows = [(w, r, PADDED_VOCAB) for w, r in grammar_states(tokenizer, PADDED_VOCAB)]
    words = (PADDED_VOCAB + 31) // 32
    rows.append(("vLLM's no-constraint row (all ones, padding bits too)", np.full(words, -1, np.int32), PADDED_VOCAB))
    rows += [(f"random row {i}", rng.integers(-2**31, 2**31, size=words, dtype=np.int64).astype(np.int32),
              PADDED_VOCAB) for i in range(3)]
    for where, row, vocab_size in rows:
        expected = xgrammar_allowed(row, vocab_size)
        got = [int(i) for i in impl.allowed_token_ids(row, vocab_size)]
        assert got == expected, \
            f"allowed_token_ids for {where}: {len(got)} ids {got[:5]}..{got[-3:]}, xgrammar reads " \
            f"{len(expected)} ids {expected[:5]}..{expected[-3:]}"
        count = impl.num_allowed_tokens(row, vocab_size)
        assert count == len(expected), f"num_allowed_tokens for {where}: {count}, xgrammar counts {len(expected)}"


def test_allowed_tokens_match_xgrammar(impl: Any, hf_tokenizer: Any) -> None:
    check_allowed(impl, hf_tokenizer)


def test_grader_catches_padding_bits_read_as_tokens(hf_tokenizer: Any) -> None:
    with pytest.raises(AssertionError, match="xgrammar reads"):
        check_allowed(load_implementation("lab8_structured", BROKEN), hf_tokenizer)


# --- 2. apply the bitmask to a batch's logits ---------------------------------------------------


def check_apply(impl: Any, tokenizer: Any) -> None:
    states = [row for _, row in grammar_states(tokenizer, PADDED_VOCAB)]
    rng = np.random.default_rng(2)
    cases = (  # (batch order, constrained requests in the scheduler's order)
        (["a", "b", "c"], ["a", "b", "c"]),
        (["a", "b", "c", "d"], ["c", "a"]),  # d and b unconstrained, bitmask in another order
        (["free", "json"], ["json"]),
    )
    for dtype in (torch.float32, torch.bfloat16):
        for batch, structured in cases:
            picks = rng.choice(len(states), size=len(structured), replace=False)
            bitmask = np.stack([states[i] for i in picks])
            logits = torch.from_numpy(rng.normal(size=(len(batch), PADDED_VOCAB)).astype(np.float32)).to(dtype)
            expected = logits.clone()
            vllm_apply_grammar_bitmask(expected, bitmask, batch, structured)
            got = logits.clone()
            impl.apply_grammar_bitmask(got, bitmask, list(batch), list(structured))
            for r, req_id in enumerate(batch):
                if not torch.equal(got[r], expected[r]):
                    bad = int((got[r] != expected[r]).nonzero()[0, 0])
                    raise AssertionError(
                        f"apply_grammar_bitmask: request {req_id!r} (batch {batch}, bitmask rows {structured}, "
                        f"{dtype}): token {bad} has logit {got[r, bad].item()}, vLLM's apply_grammar_bitmask "
                        f"leaves {expected[r, bad].item()}")


def test_apply_matches_vllm(impl: Any, hf_tokenizer: Any) -> None:
    check_apply(impl, hf_tokenizer)


def test_grader_catches_rows_applied_in_batch_order(hf_tokenizer: Any) -> None:
    with pytest.raises(AssertionError, match="vLLM's apply_grammar_bitmask leaves"):
        check_apply(load_implementation("lab8_structured", BROKEN), hf_tokenizer)


# --- with the live engine -------------------------------------------------------------------------


@pytest.mark.engine
def test_answers_match_the_live_engines_bitmasks(impl: Any, llm: Any) -> None:
    """Every bitmask row the scheduler built for the lab's runs: packed back, read, and the sampled token in it."""
    runs = st.run_constrained(llm, (st.JSON, st.REGEX, st.CHOICE), max_tokens=12)
    for name, run in runs.items():
        assert len(run.bitmasks) == len(run.token_ids), name
        for step, (row, token_id) in enumerate(zip(run.bitmasks, run.token_ids)):
            allowed = xgrammar_allowed(row, run.vocab_size)
            assert [int(i) for i in impl.allowed_token_ids(row, run.vocab_size)] == allowed, \
                f"{name}, step {step}: allowed_token_ids differs from xgrammar's reading of the engine's row"
            assert token_id in allowed, f"{name}, step {step}: vLLM sampled a token the bitmask masked"
            assert impl.num_allowed_tokens(row, run.vocab_size) == len(allowed)
            packed = np.asarray(impl.pack_token_bitmask(allowed, run.vocab_size))
            assert np.array_equal(without_padding_bits(packed, run.vocab_size),
                                  without_padding_bits(row, run.vocab_size)), \
                f"{name}, step {step}: pack_token_bitmask differs from the row vLLM's scheduler built"


def test_learner_file_mirrors_the_reference() -> None:
    assert_learner_mirrors_reference("lab8_structured", {"pack_token_bitmask", "allowed_token_ids", "num_allowed_tokens", "apply_grammar_bitmask"})
