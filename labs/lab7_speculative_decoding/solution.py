"""Lab 7 reference solution: the n-gram proposal, greedy verification and acceptance arithmetic.
Graded by tests/exercises/test_lab7_speculative_decoding.py against vLLM's own `NgramProposer`
function, `rejection_sample` and `SpecDecodingStats` / `SpecDecodingLogging`.
"""

from __future__ import annotations

import math
from typing import Any


def propose_ngram(context_token_ids: list[int], prompt_lookup_min: int, prompt_lookup_max: int,
                  num_speculative_tokens: int, max_model_len: int) -> list[int]:
    """The n-gram drafter's proposal: the longest suffix match, its earliest occurrence, k tokens after it."""
    tokens = list(context_token_ids)
    num_tokens = len(tokens)
    k = min(num_speculative_tokens, max_model_len - num_tokens)
    if num_tokens < prompt_lookup_min or k <= 0:
        return []
    for n in range(min(prompt_lookup_max, num_tokens - 1), prompt_lookup_min - 1, -1):  # longest first
        suffix = tokens[num_tokens - n:]
        for start in range(num_tokens - n):  # leftmost first; start == num_tokens - n is the suffix itself
            if tokens[start:start + n] == suffix:
                return tokens[start + n:start + n + k]
    return []


def verify_greedy(draft_token_ids: list[int], target_argmax: list[int], bonus_token_id: int) -> list[int]:
    """Accepted drafts, then the target's token at the first mismatch, or the bonus when all pass."""
    kept: list[int] = []
    for draft, target in zip(draft_token_ids, target_argmax):
        kept.append(target)  # accepted (== draft) or recovered (the target's own choice)
        if draft != target:
            return kept
    return kept + [bonus_token_id]


def acceptance_summary(records: list[tuple[int, int]], num_speculative_tokens: int) -> dict[str, Any]:
    """Acceptance rate, mean acceptance length (bonus included) and per-position rates, as vLLM logs them."""
    num_drafts = len(records)
    num_draft_tokens = sum(d for d, _ in records)
    num_accepted = sum(a for _, a in records)
    per_position = [sum(a > i for _, a in records) / num_drafts if num_drafts else math.nan
                    for i in range(num_speculative_tokens)]
    return {"num_drafts": num_drafts, "num_draft_tokens": num_draft_tokens, "num_accepted_tokens": num_accepted,
            "acceptance_rate": num_accepted / num_draft_tokens if num_draft_tokens else math.nan,
            "mean_acceptance_length": 1 + num_accepted / num_drafts if num_drafts else math.nan,
            "per_position_acceptance_rate": per_position}
