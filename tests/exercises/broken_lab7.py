"""A deliberately wrong Lab 7 implementation: the grader must fail it (see test_lab7_speculative_decoding.py)."""

from __future__ import annotations

import math
from typing import Any

from labs.lab7_speculative_decoding import solution as reference


def propose_ngram(context_token_ids: list[int], prompt_lookup_min: int, prompt_lookup_max: int,
                  num_speculative_tokens: int, max_model_len: int) -> list[int]:
    # Classic mistake: the most recent occurrence wins (vLLM takes the earliest).
    tokens = list(context_token_ids)
    num_tokens = len(tokens)
    k = min(num_speculative_tokens, max_model_len - num_tokens)
    if num_tokens < prompt_lookup_min or k <= 0:
        return []
    for n in range(min(prompt_lookup_max, num_tokens - 1), prompt_lookup_min - 1, -1):
        suffix = tokens[num_tokens - n:]
        for start in reversed(range(num_tokens - n)):
            if tokens[start:start + n] == suffix:
                return tokens[start + n:start + n + k]
    return []


def verify_greedy(draft_token_ids: list[int], target_argmax: list[int], bonus_token_id: int) -> list[int]:
    # Classic mistake: stops at the first mismatch without the target's own (recovered) token.
    kept = reference.verify_greedy(draft_token_ids, target_argmax, bonus_token_id)
    accepted = next((i for i, (d, t) in enumerate(zip(draft_token_ids, target_argmax)) if d != t), None)
    return kept if accepted is None else kept[:-1]


def acceptance_summary(records: list[tuple[int, int]], num_speculative_tokens: int) -> dict[str, Any]:
    # Classic mistake: the rate over K drafts per step, though a step may verify fewer than K.
    out = reference.acceptance_summary(records, num_speculative_tokens)
    slots = len(records) * num_speculative_tokens
    out["acceptance_rate"] = out["num_accepted_tokens"] / slots if slots else math.nan
    return out
