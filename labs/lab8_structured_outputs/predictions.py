"""Lab 8's predictions, checked against the bitmasks the live scheduler built and the engine's output.

    first step     how many of the vocabulary's tokens the JSON schema's grammar allows for the
                   first output token (the popcount of the first bitmask row vLLM built)
    valid JSON     whether the phrasebook model's answer under the JSON schema parses as JSON
                   that fits the schema within max_tokens

Why here and not in the notebook: the same functions are tested against an independent replay
of the grammar in xgrammar (tests/test_lab8_structured_outputs_predictions.py).
"""

from __future__ import annotations

from typing import Any

from labs.core.predict import Verdict, check_choice, check_number
from labs.lab8_structured_outputs.structured import ConstrainedRun, allowed_ids


def _shown(ids: list[int], tokenizer: Any, limit: int = 8) -> str:
    return ", ".join(repr(tokenizer.decode([i])) for i in ids[:limit]) + (" ..." if len(ids) > limit else "")


def check_first_step_allowed(predicted: int | None, run: ConstrainedRun, tokenizer: Any,
                             quiet: bool = False) -> Verdict:
    """The learner's count of allowed tokens at the JSON schema's first step, against the engine's bitmask."""
    ids = allowed_ids(run.bitmasks[0], run.vocab_size)
    why = (f"The scheduler's first bitmask row for this request allows {len(ids)} of {run.vocab_size:,} token ids: "
           f"{_shown(ids, tokenizer)}. A JSON object must open with '{{', and xgrammar allows no whitespace before "
           "it; a tokenizer with tokens such as '{\"' or '{\\n' would allow those too (the count is the tokenizer's, "
           "not the grammar's alone).")
    return check_number("token ids the JSON schema allows at the first step", predicted, len(ids), why, quiet=quiet)


def check_valid_json(predicted: bool | None, run: ConstrainedRun, tokenizer: Any, quiet: bool = False) -> Verdict:
    """The learner's True/False: does the constrained answer parse as JSON that fits the schema?"""
    counts = run.allowed_counts
    later = sorted(set(counts[1:]))
    why = (f"The engine wrote {len(run.token_ids)} tokens, {run.text!r}, finish_reason {run.finish_reason!r}. "
           f"After the first step the grammar allowed {later} tokens per step; the model picked from those what it "
           "scored highest. ")
    if run.valid:
        why += "It closed the object within max_tokens: the grammar guarantees the syntax once the output ends."
    elif run.finish_reason == "length":
        why += ("JSON allows whitespace between tokens, and whitespace is what a model that never saw JSON scores "
                "highest among the allowed tokens: it never writes the key, and max_tokens stops it mid-object. "
                "The grammar guarantees a valid prefix, not an end: that takes max_tokens and a model that knows "
                "the format.")
    else:
        why += "It ended without completing the object."
    return check_choice("the answer under the JSON schema is valid JSON", predicted, run.valid, why,
                        choices=(True, False), quiet=quiet)
