"""Lab 8 (labs/lab8_structured_outputs/structured.py) against the real engine: structured outputs through xgrammar.

One batch of the lab's four requests (JSON schema, regex, choice list, unconstrained) on the
session's tiny-phrasebook engine; the bitmasks recorded from the scheduler are checked against
an independent replay of each grammar in xgrammar, token by token.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from labs.core import vllm_internals as vi
from labs.core.vllm_internals.structured_output import (
    record_grammar_bitmasks,
    structured_outputs_params,
    xgrammar_matcher,
    xgrammar_next_bitmask,
    xgrammar_rejected_token_ids,
)
from labs.lab8_structured_outputs import structured as st

MAX_TOKENS = 16


@pytest.fixture(scope="module")
def runs(llm: Any) -> dict[str, st.ConstrainedRun]:
    return st.run_constrained(llm, max_tokens=MAX_TOKENS)


def matcher_for(tokenizer: Any, constraint: st.Constraint, vocab_size: int, stop_token_ids: list[int]) -> Any:
    spec = {"json": dict(json_schema=json.dumps(constraint.spec)), "regex": dict(regex=constraint.spec),
            "choice": dict(choice=constraint.spec)}[constraint.kind]
    return xgrammar_matcher(tokenizer, vocab_size, stop_token_ids=stop_token_ids, **spec)


@pytest.fixture(scope="module")
def stop_token_ids(model_path: Any) -> list[int]:
    """What vLLM adds to a request's stop tokens: the generation config's eos_token_id (here [2, 0])."""
    from transformers import GenerationConfig

    eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


def clear_padding(row: np.ndarray, vocab_size: int) -> np.ndarray:
    row = row.copy()
    if vocab_size % 32:
        row[-1] &= np.int32((1 << (vocab_size % 32)) - 1)
    return row


@pytest.mark.engine
def test_recorded_bitmasks_are_the_grammars_own(runs: dict[str, st.ConstrainedRun], tokenizer: Any,
                                                stop_token_ids: list[int]) -> None:
    """Replaying each answer through its grammar in xgrammar gives the bitmask the scheduler built, step by step."""
    for name in ("json schema", "regex", "choice"):
        run = runs[name]
        assert run.vocab_size == 4096 and len(run.bitmasks) == len(run.token_ids) > 0, name
        matcher = matcher_for(tokenizer, run.constraint, run.vocab_size, stop_token_ids)
        for step, (row, token_id) in enumerate(zip(run.bitmasks, run.token_ids)):
            expected = xgrammar_next_bitmask(matcher, run.vocab_size)
            assert np.array_equal(clear_padding(row, run.vocab_size), clear_padding(expected, run.vocab_size)), \
                f"{name} step {step}"
            rejected = set(xgrammar_rejected_token_ids(row, run.vocab_size))
            assert token_id not in rejected, f"{name} step {step}: vLLM sampled a masked token"
            assert run.allowed_counts[step] == run.vocab_size - len(rejected)
            assert st.allowed_ids(row, run.vocab_size) == sorted(set(range(run.vocab_size)) - rejected)
            assert matcher.accept_token(token_id)
    assert len(runs["unconstrained"].bitmasks) == 0, "vLLM builds no bitmask row for an unconstrained request"
    # One row per constrained request past its prefill; how many share a step depends on when each
    # grammar finished compiling (vLLM compiles them in a thread pool while the batch runs).
    assert all(1 <= n <= 3 for name in ("json schema", "regex", "choice") for n in runs[name].num_batch_rows)


@pytest.mark.engine
def test_json_schema_on_a_model_that_never_saw_json(runs: dict[str, st.ConstrainedRun], tokenizer: Any) -> None:
    """What the notebook shows: '{', then only whitespace until max_tokens; the text does not parse."""
    run = runs["json schema"]
    assert tokenizer.decode(run.token_ids[:1]) == "{" and run.allowed_counts[0] == 1
    assert run.finish_reason == "length" and len(run.token_ids) == MAX_TOKENS
    assert run.text.startswith("{") and run.text[1:].strip() == "", run.text
    with pytest.raises(json.JSONDecodeError):
        json.loads(run.text)
    assert not run.valid
    allowed_after = {tokenizer.decode([i]) for i in st.allowed_ids(run.bitmasks[1], run.vocab_size)}
    assert '"' in allowed_after and allowed_after - {'"'} <= {" ", "\n", "\t", "\r"}, allowed_after


@pytest.mark.engine
def test_regex_and_choice_succeed(runs: dict[str, st.ConstrainedRun]) -> None:
    regex, choice, free = runs["regex"], runs["choice"], runs["unconstrained"]
    assert regex.valid and regex.finish_reason == "stop" and len(regex.text) == 8, regex.text
    assert regex.allowed_counts[3] == 1, "after three digits only '-' is allowed"
    assert choice.valid and choice.finish_reason == "stop"
    assert choice.text == free.text == "早上好。", "the choice list keeps the model's own answer"
    table = st.summary_table(runs)
    assert list(table["satisfies the constraint"]) == [False, True, True, True]
    steps = st.step_table(regex, _Decoder())
    assert steps["sampled allowed"].all() and len(steps) == len(regex.token_ids)


class _Decoder:
    """A stand-in tokenizer for step_table: token ids as text (decoding is not what is tested here)."""

    def decode(self, ids: list[int]) -> str:
        return f"<{ids[0]}>"


@pytest.mark.engine
def test_recording_leaves_the_scheduler_as_it_was(llm: Any) -> None:
    sched = vi.scheduler(llm)
    before = vars(sched).get("get_grammar_bitmask")
    with record_grammar_bitmasks(llm) as steps:
        assert vars(sched).get("get_grammar_bitmask") is not None
    assert vars(sched).get("get_grammar_bitmask") is before and steps == []


def test_one_constraint_per_request() -> None:
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match="only use one kind"):
        structured_outputs_params(json=st.PHRASE_SCHEMA, regex=st.PHONE_REGEX)
    assert st.Constraint("r", "regex", st.PHONE_REGEX).is_valid("123-4567")
    assert not st.JSON.is_valid('{"zh": 1}') and st.JSON.is_valid('{"zh": "好"}')


def test_count_allowed_reads_xgrammars_layout() -> None:
    import torch
    import xgrammar as xgr

    rng = np.random.default_rng(0)
    mask = rng.random((1, 100)) < 0.3
    row = xgr.testing.bool_mask_to_bitmask(torch.from_numpy(mask))[0].numpy()  # padding bits set to 1
    assert st.count_allowed(row, 100) == mask.sum()
    assert st.allowed_ids(row, 100) == np.flatnonzero(mask[0]).tolist()
