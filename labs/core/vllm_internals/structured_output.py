"""Lab 8's hooks into structured outputs: the grammar's token bitmask, step by step (vLLM 0.32.0).

Why here: the bitmask is built inside the engine core, by the scheduler's
`StructuredOutputManager.grammar_bitmask` (vllm/v1/structured_output/__init__.py), reached as
`Scheduler.get_grammar_bitmask` (vllm/v1/core/sched/scheduler.py), which `EngineCore.step` calls
once per step between `execute_model` and `sample_tokens`; the model runner then applies it to
the logits with `apply_grammar_bitmask` (vllm/v1/structured_output/utils.py, through
`xgrammar.apply_token_bitmask_inplace`). None of these paths is public API.

The bitmask layout is xgrammar's: per request one row of ceil(vocab_size / 32) int32 words; bit i
of word j is token 32 * j + i; 1 = allowed. Its vocab_size is the model's (`get_vocab_size()`,
the logits' width), which may be larger than the tokenizer: xgrammar marks the ids the tokenizer
lacks as special tokens, never allowed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from labs.core.vllm_internals.live_engine import external_request_id, scheduler
from labs.core.vllm_internals.version import check_vllm_version


def structured_outputs_params(**kwargs: Any) -> Any:
    """vLLM's `StructuredOutputsParams(json=... | regex=... | choice=... | grammar=...)`.

    Why through here: the class lives in `vllm.sampling_params` and is not re-exported by `vllm`;
    it goes into `SamplingParams(structured_outputs=...)`. Exactly one constraint must be given
    (vLLM raises otherwise).
    """
    check_vllm_version()
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(**kwargs)


@dataclass(frozen=True)
class GrammarStep:
    """One engine step's grammar bitmask, as the scheduler handed it to the model runner.

    Attributes:
        step: the engine step's index within the recording (steps without a bitmask are counted).
        request_ids: the requests' ids as the learner chose them, in the bitmask's row order.
        bitmask: int32, shape (num_requests, ceil(vocab_size / 32)); a copy (vLLM reuses its buffer).
    """

    step: int
    request_ids: list[str]
    bitmask: np.ndarray  # (num_structured_reqs, num_words) int32


@contextmanager
def record_grammar_bitmasks(llm_or_engine: Any) -> Iterator[list[GrammarStep]]:
    """Record every bitmask the live scheduler builds while the block runs; restore it on exit.

    Why wrap `get_grammar_bitmask` on this one scheduler instance: it is where the engine core
    asks the StructuredOutputManager for the batch's masks (once per step, for requests past
    their prefill), so what is recorded is exactly what the model runner applies, unchanged.
    A step whose batch has no constrained request (or only prompts still prefilling) records
    nothing but still counts in `step`.

    Yields:
        The list of `GrammarStep`s, filled while the block runs.
    """
    sched = scheduler(llm_or_engine)
    before = vars(sched).get("get_grammar_bitmask")  # another wrapper may be installed: keep it
    original = sched.get_grammar_bitmask
    recorded: list[GrammarStep] = []
    counter = [0]

    def get_grammar_bitmask(scheduler_output: Any) -> Any:
        output = original(scheduler_output)
        if output is not None:
            ids = [external_request_id(rid) for rid in output.structured_output_request_ids]
            recorded.append(GrammarStep(counter[0], ids, np.array(output.grammar_bitmask, copy=True)))
        counter[0] += 1
        return output

    sched.get_grammar_bitmask = get_grammar_bitmask
    try:
        yield recorded
    finally:
        if before is None:
            del sched.get_grammar_bitmask
        else:
            sched.get_grammar_bitmask = before


def grammar_vocab_size(llm_or_engine: Any) -> int:
    """The vocabulary size vLLM sizes bitmasks for: the model's (the logits' width), not the tokenizer's."""
    return int(scheduler(llm_or_engine).vllm_config.model_config.get_vocab_size())


def xgrammar_matcher(tokenizer: Any, vocab_size: int, *, json_schema: str | None = None, regex: str | None = None,
                     choice: list[str] | None = None, stop_token_ids: list[int] | None = None) -> Any:
    """An `xgrammar.GrammarMatcher` for one constraint, compiled as vLLM's XgrammarBackend compiles it.

    Why: a grammar state outside the engine lets a grader or a notebook ask xgrammar itself which
    tokens are allowed, token by token. As in vllm/v1/structured_output/backend_xgrammar.py:
    `TokenizerInfo.from_huggingface(tokenizer, vocab_size=model vocab)`, JSON with any whitespace,
    a choice list turned into a grammar by vLLM's own `choice_as_grammar`.

    Args:
        tokenizer: a Hugging Face tokenizer (e.g. `llm.get_tokenizer()`).
        vocab_size: the model's vocabulary size (may exceed the tokenizer's: padded ids).
        json_schema / regex / choice: exactly one constraint.
        stop_token_ids: the tokens that may end the answer once the grammar is complete; vLLM passes the
            request's `all_stop_token_ids` (the tokenizer's EOS and the generation config's eos_token_id
            list). None: the tokenizer's own stop tokens.
    """
    check_vllm_version()
    import xgrammar as xgr
    from vllm.v1.structured_output.utils import choice_as_grammar

    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size))
    if sum(x is not None for x in (json_schema, regex, choice)) != 1:
        raise ValueError("give exactly one of json_schema, regex, choice")
    if json_schema is not None:
        compiled = compiler.compile_json_schema(json_schema, any_whitespace=True)
    elif regex is not None:
        compiled = compiler.compile_regex(regex)
    else:
        compiled = compiler.compile_grammar(choice_as_grammar(choice))
    return xgr.GrammarMatcher(compiled, override_stop_tokens=list(stop_token_ids) if stop_token_ids else None)


def xgrammar_next_bitmask(matcher: Any, vocab_size: int) -> np.ndarray:
    """The matcher's bitmask for its next token: int32 (ceil(vocab_size / 32),), filled by xgrammar."""
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(1, vocab_size)  # (1, num_words), all ones
    matcher.fill_next_token_bitmask(bitmask)
    return bitmask[0].numpy().copy()


def xgrammar_rejected_token_ids(bitmask_row: np.ndarray, vocab_size: int) -> list[int]:
    """xgrammar's own reading of a bitmask row: the token ids it masks (its debugging helper)."""
    import torch
    import xgrammar as xgr

    row = torch.from_numpy(np.ascontiguousarray(bitmask_row, dtype=np.int32)).reshape(1, -1)
    return sorted(xgr.testing._get_masked_tokens_from_bitmask(row, vocab_size))


def vllm_apply_grammar_bitmask(logits: Any, bitmask: np.ndarray, batch_req_ids: list[str],
                               structured_req_ids: list[str]) -> None:
    """vLLM's own `apply_grammar_bitmask` on a batch's logits, in place (no speculative tokens).

    Why: it is the exact code the model runner runs before sampling: rows of `bitmask` follow
    `structured_req_ids` (the scheduler's order), the logits follow the batch's order, and the
    requests without a grammar are left alone. The scheduler output and input batch are stood in
    for by the two attributes the function reads.

    Args:
        logits: float tensor (num_reqs, vocab_size), rows in `batch_req_ids` order.
        bitmask: int32 (len(structured_req_ids), ceil(vocab_size / 32)).
        batch_req_ids: the batch's request ids, in the order of the logits' rows.
        structured_req_ids: the constrained requests, in the order of the bitmask's rows.
    """
    check_vllm_version()
    from vllm.v1.core.sched.output import GrammarOutput
    from vllm.v1.structured_output.utils import apply_grammar_bitmask

    scheduler_output = SimpleNamespace(scheduled_spec_decode_tokens={})
    input_batch = SimpleNamespace(req_ids=list(batch_req_ids))
    grammar_output = GrammarOutput(list(structured_req_ids), np.ascontiguousarray(bitmask, dtype=np.int32))
    apply_grammar_bitmask(scheduler_output, grammar_output, input_batch, logits)
