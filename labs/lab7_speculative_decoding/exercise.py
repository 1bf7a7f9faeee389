"""Lab 7 exercises: the three rules behind n-gram speculative decoding, as vLLM applies them.

Fill in each function, then run `make grade LAB=7`. The tests (tests/exercises/test_lab7_speculative_decoding.py)
compare your answers with vLLM's own code, not with fixed numbers: the numba function vLLM's
`NgramProposer` runs per request, the `rejection_sample` of vLLM's `RejectionSampler` (greedy
path) on the same tensors, and vLLM's `SpecDecodingStats` / `SpecDecodingLogging` arithmetic.
"""

from __future__ import annotations

from typing import Any


def propose_ngram(context_token_ids: list[int], prompt_lookup_min: int, prompt_lookup_max: int,
                  num_speculative_tokens: int, max_model_len: int) -> list[int]:
    """The draft tokens vLLM's n-gram (prompt lookup) drafter proposes for one request.

    The context is every token of the request so far (prompt + output). The drafter looks for
    the context's last n tokens (its suffix) earlier in the context and proposes the tokens that
    followed there, betting the text repeats itself. vLLM's rules:
      - n ranges over [prompt_lookup_min, prompt_lookup_max]; the LONGEST n that matches wins;
      - among the earlier occurrences of that suffix, the EARLIEST (leftmost) one wins; an
        occurrence may overlap the suffix itself, but is never the suffix itself;
      - propose the (up to) k tokens that follow the occurrence, with
        k = min(num_speculative_tokens, max_model_len - len(context)); fewer when the context
        ends first (the tokens up to its end);
      - no draft at all ([]) when the context is shorter than prompt_lookup_min, when k <= 0,
        or when no suffix of length >= prompt_lookup_min occurs earlier.

    Args:
        context_token_ids: the request's tokens so far.
        prompt_lookup_min, prompt_lookup_max: the n-gram lengths tried (speculative_config).
        num_speculative_tokens: K, the most drafts per step.
        max_model_len: the engine's longest sequence; drafts never go past it.

    Returns:
        The draft token ids (0..K of them).

    Example: context [1, 2, 3, 4, 1, 2, 3, 9, 1, 2, 3], min 2, max 4, K 3: the suffix [1, 2, 3]
    (n = 3; no 4-gram matches) occurs at 0 and at 4; the earliest wins: drafts [4, 1, 2].
    Hint: read `_find_longest_matched_ngram_and_propose_tokens` in
    vllm/v1/spec_decode/ngram_proposer.py after you try (it does this in one KMP pass).
    """
    raise NotImplementedError("Exercise 1: the n-gram drafter's proposal")


def verify_greedy(draft_token_ids: list[int], target_argmax: list[int], bonus_token_id: int) -> list[int]:
    """The tokens one greedy request keeps after the target model verified its drafts in one step.

    The step ran the target model on the request's last token plus its k drafts, so it has the
    target's greedy choice (argmax) at each draft position, and one more after the last draft
    (the bonus token). A draft is accepted while it equals the target's choice at its position;
    at the first mismatch the target's own choice replaces it (the recovered token) and the rest
    is thrown away; if every draft is accepted, the bonus token follows. Either way the step
    keeps 1..k+1 tokens, exactly those plain greedy decoding would have produced.

    Args:
        draft_token_ids: the request's drafts this step (may be empty).
        target_argmax: the target's argmax at each draft position (same length).
        bonus_token_id: the target's argmax after the last draft.

    Returns:
        The kept tokens: accepted drafts, then the recovered or the bonus token.
    """
    raise NotImplementedError("Exercise 2: greedy verification (accepted + recovered/bonus)")


def acceptance_summary(records: list[tuple[int, int]], num_speculative_tokens: int) -> dict[str, Any]:
    """vLLM's acceptance figures from per-draft (num_draft_tokens, num_accepted_tokens) records.

    One record per request per step that verified drafts (what the scheduler observes in
    `update_from_output`): how many drafts it verified (<= K) and how many were accepted.
      - num_drafts: the number of records; num_draft_tokens, num_accepted_tokens: the sums;
      - acceptance_rate = accepted / draft tokens (nan without draft tokens);
      - mean_acceptance_length = 1 + accepted / num_drafts: tokens per verifying step, counting
        the one token the target adds each step (nan without drafts);
      - per_position_acceptance_rate: for position i in 0..K-1, how many records accepted more
        than i drafts, / num_drafts (nan each without drafts).

    Args:
        records: (num_draft_tokens, num_accepted_tokens) pairs.
        num_speculative_tokens: K.

    Returns:
        A dict with the keys above.
    """
    raise NotImplementedError("Exercise 3: acceptance rate and mean acceptance length")
