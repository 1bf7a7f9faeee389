"""Lab 8 reference solution: pack, read and apply xgrammar's token bitmask, as vLLM uses it.

Graded by tests/exercises/test_lab8_structured_outputs.py against xgrammar's own bitmasks (the
matcher's `fill_next_token_bitmask`, `testing.bool_mask_to_bitmask`, `_get_masked_tokens_from_bitmask`),
vLLM's own `apply_grammar_bitmask` and the bitmasks the live engine's scheduler built.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def _bits(bitmask_row: np.ndarray) -> np.ndarray:
    """One 0/1 byte per bit of an int32 row, token order: bit i of word j at index 32 * j + i."""
    words = np.ascontiguousarray(bitmask_row, dtype="<i4")  # little-endian: byte 0 holds bits 0..7
    return np.unpackbits(words.view(np.uint8), bitorder="little")


def pack_token_bitmask(allowed_token_ids: Iterable[int], vocab_size: int) -> np.ndarray:
    """xgrammar's bitmask row for a set of allowed token ids: int32 (ceil(vocab_size / 32),)."""
    ids = np.fromiter(allowed_token_ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids must be in [0, {vocab_size}), got {ids.min()}..{ids.max()}")
    words = np.zeros((vocab_size + 31) // 32, dtype=np.uint32)  # unsigned: bit 31 is an ordinary bit here
    np.bitwise_or.at(words, ids >> 5, np.left_shift(np.uint32(1), (ids & 31).astype(np.uint32)))
    return words.view(np.int32)  # same bits; token 31 makes the word negative


def allowed_token_ids(bitmask_row: np.ndarray, vocab_size: int) -> list[int]:
    """The token ids a bitmask row allows, ascending; bits at vocab_size and past it are padding."""
    return np.flatnonzero(_bits(bitmask_row)[:vocab_size]).tolist()


def num_allowed_tokens(bitmask_row: np.ndarray, vocab_size: int) -> int:
    """How many of the first vocab_size token ids a bitmask row allows."""
    return int(_bits(bitmask_row)[:vocab_size].sum())


def apply_grammar_bitmask(logits: torch.Tensor, bitmask: np.ndarray, batch_req_ids: list[str],
                          structured_req_ids: list[str]) -> None:
    """Set the logits of disallowed tokens to -inf, in place, for the constrained requests of a batch."""
    vocab_size = logits.shape[-1]  # the model's vocabulary: the bitmask covers it (and maybe a few padding bits)
    for row, req_id in zip(bitmask, structured_req_ids):
        if req_id not in batch_req_ids:
            continue  # not in this batch: nothing to mask
        allowed = torch.from_numpy(_bits(row)[:vocab_size].astype(bool))  # (vocab_size,)
        logits[batch_req_ids.index(req_id)].masked_fill_(~allowed, float("-inf"))
