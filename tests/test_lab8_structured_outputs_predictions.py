"""Lab 8's prediction checks: the first step's allowed-token count and the JSON verdict are read from
the live engine's run, and a wrong guess is called wrong.

Independent expectations: the count from xgrammar's own reader of the recorded bitmask row (and
from a fresh compile of the schema in xgrammar), validity from `json.loads` of the engine's text.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from labs.core.predict import NO_PREDICTION
from labs.core.vllm_internals.structured_output import (
    xgrammar_matcher,
    xgrammar_next_bitmask,
    xgrammar_rejected_token_ids,
)
from labs.lab8_structured_outputs import predictions
from labs.lab8_structured_outputs import structured as st


@pytest.fixture(scope="module")
def json_run(llm: Any) -> st.ConstrainedRun:
    return st.run_constrained(llm, (st.JSON,), max_tokens=12)["json schema"]


@pytest.mark.engine
def test_first_step_count_is_the_engines(json_run: st.ConstrainedRun, tokenizer: Any) -> None:
    expected = json_run.vocab_size - len(xgrammar_rejected_token_ids(json_run.bitmasks[0], json_run.vocab_size))
    fresh = xgrammar_next_bitmask(xgrammar_matcher(tokenizer, json_run.vocab_size,
                                                   json_schema=json.dumps(st.PHRASE_SCHEMA)), json_run.vocab_size)
    assert expected == json_run.vocab_size - len(xgrammar_rejected_token_ids(fresh, json_run.vocab_size))
    right = predictions.check_first_step_allowed(expected, json_run, tokenizer, quiet=True)
    assert right.right is True and right.actual == expected and "'{'" in right.message
    wrong = predictions.check_first_step_allowed(expected + 100, json_run, tokenizer, quiet=True)
    assert wrong.right is False and "wrong by" in wrong.message
    none = predictions.check_first_step_allowed(None, json_run, tokenizer, quiet=True)
    assert none.right is None and NO_PREDICTION in none.message


@pytest.mark.engine
def test_valid_json_verdict_is_the_texts(json_run: st.ConstrainedRun, tokenizer: Any) -> None:
    try:
        parsed = json.loads(json_run.text)
        valid = isinstance(parsed, dict) and set(parsed) == {"zh"}
    except json.JSONDecodeError:
        valid = False
    assert json_run.valid is valid
    right = predictions.check_valid_json(valid, json_run, tokenizer, quiet=True)
    assert right.right is True and json_run.finish_reason in right.message
    wrong = predictions.check_valid_json(not valid, json_run, tokenizer, quiet=True)
    assert wrong.right is False and "wrong" in wrong.message
    if json_run.finish_reason == "length":
        assert "max_tokens" in wrong.message
    with pytest.raises(ValueError, match="not one of the choices"):
        predictions.check_valid_json("yes", json_run, tokenizer, quiet=True)
