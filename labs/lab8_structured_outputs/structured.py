"""Lab 8 logic: constrained decoding with vLLM's structured outputs (xgrammar), read step by step.

Three constraints on the same phrasebook prompt, in one batch with an unconstrained request: a
JSON schema, a regex and a choice list. While they run, the scheduler's grammar bitmasks are
recorded (`labs.core.vllm_internals.structured_output.record_grammar_bitmasks`), so every output
token can be shown with how many of the vocabulary's tokens the grammar allowed at that step.

What it teaches: the grammar only removes tokens; the model still picks among what is left. The
phrasebook model never saw JSON: under the schema it may write "{" and then whitespace, which
JSON allows anywhere between tokens, until max_tokens stops it (finish_reason "length", text that
does not parse). A regex of digits or a choice list leaves it little room to go wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from labs.core.vllm_internals.structured_output import (
    grammar_vocab_size,
    record_grammar_bitmasks,
    structured_outputs_params,
)

SOURCE_JA = "おはようございます。"  # phrasebook pb001; the model answers 早上好。
PHRASE_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"zh": {"type": "string"}}, "required": ["zh"],
                                 "additionalProperties": False}
PHONE_REGEX = r"[0-9]{3}-[0-9]{4}"
CHOICES = ["早上好。", "晚安。", "谢谢。"]
DEFAULT_MAX_TOKENS = 24  # small on purpose: a constraint the model cannot finish runs until here


@dataclass(frozen=True)
class Constraint:
    """One structured-output constraint: `kind` is a `StructuredOutputsParams` field (None: unconstrained)."""

    name: str
    kind: str | None
    spec: Any = None

    def params(self) -> Any:
        """The `StructuredOutputsParams` for `SamplingParams(structured_outputs=...)`, or None."""
        return None if self.kind is None else structured_outputs_params(**{self.kind: self.spec})

    def is_valid(self, text: str) -> bool:
        """Whether `text` satisfies the constraint (a complete answer, not just a valid prefix)."""
        if self.kind == "json":
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                return False
            return isinstance(value, dict) and isinstance(value.get("zh"), str) and set(value) == {"zh"}
        if self.kind == "regex":
            return re.fullmatch(self.spec, text) is not None
        if self.kind == "choice":
            return text in self.spec
        return True


JSON = Constraint("json schema", "json", PHRASE_SCHEMA)
REGEX = Constraint("regex", "regex", PHONE_REGEX)
CHOICE = Constraint("choice", "choice", CHOICES)
FREE = Constraint("unconstrained", None)
CONSTRAINTS = (JSON, REGEX, CHOICE, FREE)


@dataclass
class ConstrainedRun:
    """What one request produced, with the grammar bitmask of each of its sampling steps.

    Attributes:
        constraint: what constrained it.
        text, token_ids, finish_reason: vLLM's output ("length": max_tokens ran out first).
        bitmasks: one row per sampled token, in order: int32 (num_tokens, ceil(vocab_size / 32));
            empty for an unconstrained request (vLLM builds no mask for it).
        vocab_size: the model's vocabulary size the rows cover.
    """

    constraint: Constraint
    text: str
    token_ids: list[int]
    finish_reason: str | None
    bitmasks: np.ndarray
    vocab_size: int
    num_batch_rows: list[int] = field(default_factory=list)  # per step: constrained requests in the bitmask

    @property
    def valid(self) -> bool:
        return self.constraint.is_valid(self.text)

    @property
    def allowed_counts(self) -> list[int]:
        """Per sampled token: how many token ids the grammar allowed at that step."""
        return [count_allowed(row, self.vocab_size) for row in self.bitmasks]


def count_allowed(bitmask_row: np.ndarray, vocab_size: int) -> int:
    """Set bits among the first `vocab_size` of an xgrammar bitmask row (bits past it are padding)."""
    bits = np.unpackbits(np.ascontiguousarray(bitmask_row, dtype="<i4").view(np.uint8), bitorder="little")
    return int(bits[:vocab_size].sum())


def allowed_ids(bitmask_row: np.ndarray, vocab_size: int) -> list[int]:
    """The token ids an xgrammar bitmask row allows (bit i of word j = token 32 * j + i)."""
    bits = np.unpackbits(np.ascontiguousarray(bitmask_row, dtype="<i4").view(np.uint8), bitorder="little")
    return np.flatnonzero(bits[:vocab_size]).tolist()


def nonzero_words(bitmask_row: np.ndarray, tokenizer: Any, vocab_size: int) -> pd.DataFrame:
    """The words of a bitmask row that allow anything: word j, its bits in hex, and the tokens they stand for.

    Why: reading a few words by hand shows the layout (token 32 * j + i is bit i of word j) that the
    exercises pack and unpack; a row where most tokens are allowed has too many words to list.
    """
    rows = []
    for j in np.flatnonzero(bitmask_row):
        ids = [i for i in allowed_ids(bitmask_row[j:j + 1], 32) if 32 * j + i < vocab_size]
        rows.append({"word": int(j), "hex": f"{int(bitmask_row[j]) & 0xFFFFFFFF:#010x}", "bits": ids,
                     "token ids": [32 * int(j) + i for i in ids],
                     "tokens": [tokenizer.decode([32 * int(j) + i]) for i in ids]})
    return pd.DataFrame(rows)


def chat_prompt(tokenizer: Any, ja: str = SOURCE_JA) -> str:
    """The phrasebook prompt (the chat template around the translation messages the model was trained on)."""
    from labs.core.models.phrasebook import translation_messages

    return tokenizer.apply_chat_template(translation_messages(ja), add_generation_prompt=True, tokenize=False)


def run_constrained(llm: Any, constraints: tuple[Constraint, ...] = CONSTRAINTS, ja: str = SOURCE_JA,
                    max_tokens: int = DEFAULT_MAX_TOKENS) -> dict[str, ConstrainedRun]:
    """Generate greedily for `ja` under each constraint, in one batch, recording the grammar bitmasks.

    Why one batch: the scheduler builds one bitmask for the whole batch, one row per constrained
    request, and the model runner leaves the unconstrained request's logits alone; one engine
    run shows both.

    Returns:
        constraint name -> `ConstrainedRun`.
    """
    from vllm import SamplingParams

    prompt = chat_prompt(llm.get_tokenizer(), ja)
    params = [SamplingParams(temperature=0.0, max_tokens=max_tokens, structured_outputs=c.params())
              for c in constraints]
    with record_grammar_bitmasks(llm) as steps:
        outputs = llm.generate([prompt] * len(constraints), params, use_tqdm=False)
    vocab_size = grammar_vocab_size(llm)
    runs: dict[str, ConstrainedRun] = {}
    for constraint, output in zip(constraints, outputs):
        rid = output.request_id
        rows = [s.bitmask[s.request_ids.index(rid)] for s in steps if rid in s.request_ids]
        sizes = [len(s.request_ids) for s in steps if rid in s.request_ids]
        words = (vocab_size + 31) // 32
        bitmasks = np.stack(rows) if rows else np.zeros((0, words), dtype=np.int32)
        completion = output.outputs[0]
        runs[constraint.name] = ConstrainedRun(constraint, completion.text, list(completion.token_ids),
                                               completion.finish_reason, bitmasks, vocab_size, sizes)
    return runs


def summary_table(runs: dict[str, ConstrainedRun]) -> pd.DataFrame:
    """One row per request: its text, finish reason, tokens, whether it satisfies its constraint."""
    rows = [{"constraint": name, "text": repr(r.text), "finish_reason": r.finish_reason, "tokens": len(r.token_ids),
             "satisfies the constraint": r.valid,
             "allowed at step 0": r.allowed_counts[0] if len(r.bitmasks) else None} for name, r in runs.items()]
    table = pd.DataFrame(rows).set_index("constraint")
    return table.astype({"allowed at step 0": "Int64"})  # None for the unconstrained request, ints otherwise


def step_table(run: ConstrainedRun, tokenizer: Any, show: int = 6) -> pd.DataFrame:
    """One row per sampling step: the token vLLM sampled and what the grammar allowed there.

    Args:
        run: a constrained run.
        tokenizer: to show tokens as text.
        show: list the allowed tokens when there are at most this many.
    """
    rows = []
    for step, (token_id, row) in enumerate(zip(run.token_ids, run.bitmasks)):
        ids = allowed_ids(row, run.vocab_size)
        shown = [tokenizer.decode([i]) for i in ids] if len(ids) <= show else f"{len(ids)} tokens"
        rows.append({"step": step, "sampled": repr(tokenizer.decode([token_id])), "token_id": token_id,
                     "allowed": len(ids), "of vocab": f"{len(ids) / run.vocab_size:.2%}",
                     "sampled allowed": token_id in ids, "allowed tokens": shown})
    return pd.DataFrame(rows).set_index("step")


def plot_allowed(runs: dict[str, ConstrainedRun]) -> Any:
    """Allowed tokens per step (log scale) for each constrained request."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, run in runs.items():
        if len(run.bitmasks):
            ax.plot(run.allowed_counts, marker="o", label=f"{name} ({run.finish_reason})")
    ax.set(yscale="log", xlabel="sampling step", ylabel="allowed tokens",
           title="How much of the vocabulary the grammar leaves, step by step")
    ax.legend(fontsize=8)
    return fig
