"""Lab 8 exercises: the token bitmask behind vLLM's structured outputs.

Fill in each function, then run `make grade LAB=8`. The tests (tests/exercises/test_lab8_structured_outputs.py)
compare your answers with xgrammar's and vLLM's own code, not with fixed numbers: the bitmask
xgrammar's `GrammarMatcher` fills for real grammar states (the phrasebook model's tokenizer, a
JSON schema, a regex, a choice list), xgrammar's own readers of a bitmask, vLLM's
`apply_grammar_bitmask` on the same logits, and the bitmasks the live engine's scheduler built.

The layout (xgrammar's, which vLLM uses): one row per request of ceil(vocab_size / 32) int32
words; bit i of word j (value 1 << i) stands for token 32 * j + i; 1 = allowed, 0 = masked.
vocab_size is the MODEL's vocabulary (the width of the logits), which can be larger than the
tokenizer's (Qwen2.5 pads 151,665 tokens to 151,936): xgrammar never allows the padded ids.
When vocab_size is not a multiple of 32, the last word has bits past the vocabulary: padding,
never a token.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def pack_token_bitmask(allowed_token_ids: Iterable[int], vocab_size: int) -> np.ndarray:
    """xgrammar's bitmask row for a set of allowed token ids.

    This is what `GrammarMatcher.fill_next_token_bitmask` writes for a grammar state, and what the
    StructuredOutputManager hands the model runner every step (one row per constrained request).
    32 tokens per word keeps a 150k-token vocabulary at 19 KB per request per step, instead of a
    150k-entry bool tensor.

    Args:
        allowed_token_ids: the token ids the grammar allows next (any order, no duplicates needed).
        vocab_size: the model's vocabulary size.

    Returns:
        np.int32 array of shape (ceil(vocab_size / 32),); bits of disallowed tokens are 0. The padding
        bits past vocab_size are not graded (xgrammar itself leaves them 0 in some states, 1 in others).

    Raises:
        ValueError: a token id outside [0, vocab_size).

    Hint: token 31 is bit 31, the sign bit of an int32: build the words as uint32 and `.view(np.int32)`,
    or Python's 1 << 31 will not fit.
    """
    raise NotImplementedError("Exercise 1: pack allowed token ids into xgrammar's int32 bitmask")


def allowed_token_ids(bitmask_row: np.ndarray, vocab_size: int) -> list[int]:
    """The token ids one bitmask row allows, ascending.

    What the notebook's step table shows: at the first step of a JSON schema, which tokens may come.

    Args:
        bitmask_row: np.int32 array (ceil(vocab_size / 32),), e.g. one row of a recorded bitmask.
        vocab_size: the model's vocabulary size; bits at vocab_size and past it are padding, never a token
            (vLLM's "no constraint" row is all ones, padding bits included).
    """
    raise NotImplementedError("Exercise 3a: list the allowed token ids of a bitmask row")


def num_allowed_tokens(bitmask_row: np.ndarray, vocab_size: int) -> int:
    """How many of the first vocab_size token ids a bitmask row allows (as allowed_token_ids, counted)."""
    raise NotImplementedError("Exercise 3b: count the allowed tokens of a bitmask row")


def apply_grammar_bitmask(logits: torch.Tensor, bitmask: np.ndarray, batch_req_ids: list[str],
                          structured_req_ids: list[str]) -> None:
    """Mask a batch's logits with the grammar bitmask, in place: disallowed tokens get -inf.

    What vLLM's model runner does between the forward pass and the sampler
    (vllm/v1/structured_output/utils.py, `apply_grammar_bitmask`): after it, greedy, temperature,
    top-k and top-p sampling can only pick allowed tokens (softmax gives -inf a probability of 0).
    Two details make it more than `logits[~mask] = -inf`:
      - the bitmask's rows follow `structured_req_ids` (the scheduler's order, constrained
        requests only), the logits' rows follow `batch_req_ids` (the model runner's order, every
        request); an unconstrained request's row is left exactly as it was;
      - the logits are as wide as the model's vocabulary; the bitmask may carry a few padding
        bits past it (ceil(vocab_size / 32) words), which belong to no logit.

    Args:
        logits: float tensor (len(batch_req_ids), vocab_size), any float dtype (bf16 too); changed in place.
        bitmask: np.int32 (len(structured_req_ids), ceil(vocab_size / 32)).
        batch_req_ids: request ids in the order of the logits' rows.
        structured_req_ids: request ids in the order of the bitmask's rows (a subset of the batch).
    """
    raise NotImplementedError("Exercise 2: apply the grammar bitmask to a batch's logits")
