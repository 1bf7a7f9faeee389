"""A deliberately wrong Lab 8 implementation: the grader must fail it (see test_lab8_structured_outputs.py)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from labs.lab8_structured_outputs import solution as reference


def pack_token_bitmask(allowed_token_ids: Iterable[int], vocab_size: int) -> np.ndarray:
    # Classic mistake: the most significant bit first (token 32 * j is bit 31), as one reads a binary number.
    words = np.zeros((vocab_size + 31) // 32, dtype=np.uint32)
    for token_id in allowed_token_ids:
        words[token_id // 32] |= np.uint32(1 << (31 - token_id % 32))
    return words.view(np.int32)


def allowed_token_ids(bitmask_row: np.ndarray, vocab_size: int) -> list[int]:
    # Classic mistake: the padding bits past the vocabulary read as tokens.
    return reference.allowed_token_ids(bitmask_row, 32 * len(bitmask_row))


def num_allowed_tokens(bitmask_row: np.ndarray, vocab_size: int) -> int:
    return len(allowed_token_ids(bitmask_row, vocab_size))


def apply_grammar_bitmask(logits: torch.Tensor, bitmask: np.ndarray, batch_req_ids: list[str],
                          structured_req_ids: list[str]) -> None:
    # Classic mistake: bitmask row i applied to logits row i, as if the batch held only constrained
    # requests in the scheduler's order.
    reference.apply_grammar_bitmask(logits, bitmask, batch_req_ids[:len(structured_req_ids)],
                                    batch_req_ids[:len(structured_req_ids)])
