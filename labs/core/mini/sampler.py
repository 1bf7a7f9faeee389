"""Sampling parameters and the sampler: logits of the last token -> the next token, per request.

The rules follow vLLM's v1 sampler (vllm/v1/sample/sampler.py): temperature 0 means greedy
(argmax); otherwise divide by the temperature, keep the smallest set of tokens whose
probability adds up to top_p, and draw from what is left. Requests with a seed draw from their
own `torch.Generator`, so their output does not depend on which other requests share the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_GREEDY_TEMPERATURE = 1e-5  # vLLM's _SAMPLING_EPS: below it a temperature counts as 0 (greedy)


@dataclass
class SamplingParams:
    """How to pick each request's tokens (names and defaults as vLLM's `SamplingParams`).

    Attributes:
        temperature: 0 = greedy; higher flattens the distribution (1.0 samples it as it is).
        top_p: sample only from the most probable tokens whose probabilities sum to top_p.
        max_tokens: the most output tokens (16, vLLM's default).
        seed: a request's own random stream; the same seed gives the same tokens.
        ignore_eos: keep generating after the end-of-sequence token (benchmarks use it to get
            outputs of a fixed length).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_TEMPERATURE


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Set to -inf every token outside each row's top-p nucleus.

    Args:
        logits: (num_seqs, vocab_size) float32, already divided by the temperature.
        top_p: (num_seqs,) in (0, 1].

    Returns:
        (num_seqs, vocab_size), the same logits with the tail masked.
    """
    # Ascending sort, as vLLM: the tokens to drop are a prefix whose probabilities sum to <= 1 - p.
    logits_sort, logits_idx = logits.sort(dim=-1, descending=False)
    probs_sum = logits_sort.softmax(dim=-1).cumsum(dim=-1)  # (num_seqs, vocab_size)
    top_p_mask = probs_sum <= 1 - top_p.unsqueeze(1)
    top_p_mask[:, -1] = False  # the most probable token always stays
    logits_sort = logits_sort.masked_fill(top_p_mask, -float("inf"))
    return torch.empty_like(logits).scatter_(-1, logits_idx, logits_sort)


def sample(logits: torch.Tensor, sampling_params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> list[int]:
    """Pick one token per row.

    Args:
        logits: (num_seqs, vocab_size) float32 logits of each request's last token.
        sampling_params: one per row.
        generators: one per row; None draws from torch's default generator (unseeded requests).

    Returns:
        The sampled token id of each row.
    """
    greedy_token_ids = logits.argmax(dim=-1)  # (num_seqs,)
    if all(p.is_greedy for p in sampling_params):
        return greedy_token_ids.tolist()

    device = logits.device
    temperature = torch.tensor([max(p.temperature, _GREEDY_TEMPERATURE) for p in sampling_params], device=device)
    logits = logits / temperature.unsqueeze(1)
    if any(p.top_p < 1 for p in sampling_params):
        logits = apply_top_p(logits, torch.tensor([p.top_p for p in sampling_params], device=device))
    probs = logits.softmax(dim=-1)  # (num_seqs, vocab_size)

    # argmax(probs / q) with q ~ Exp(1) is a draw from probs (the "exponential race"), as vLLM
    # samples: no cumulative sums, and each row can take its noise from its own generator.
    q = torch.empty_like(probs).exponential_()
    for row, generator in enumerate(generators):
        if generator is not None:
            q[row].exponential_(generator=generator)
    sampled_token_ids = probs.div(q).argmax(dim=-1)

    is_greedy = torch.tensor([p.is_greedy for p in sampling_params], device=device)
    return torch.where(is_greedy, greedy_token_ids, sampled_token_ids).tolist()
