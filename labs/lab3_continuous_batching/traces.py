"""Lab 3's workloads: requests with their own prompts and exact output lengths, replayable on any engine.

Why token ids and not text: a trace must mean the same work on every model, so prompts are
made of ids that share no prefix (no prefix-cache hit blurs a comparison) and outputs ignore
EOS (every request produces exactly `max_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TraceRequest:
    """One request of a workload: its own prompt token ids and exactly `max_tokens` outputs."""

    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int

    def sampling_params(self, final_only: bool = False) -> Any:
        """Greedy, EOS ignored: exactly `max_tokens` outputs. `final_only`: one output, at the end
        (no per-step output objects while timing)."""
        from vllm import SamplingParams
        from labs.core.vllm_internals import RequestOutputKind

        kind = RequestOutputKind.FINAL_ONLY if final_only else RequestOutputKind.CUMULATIVE
        return SamplingParams(max_tokens=self.max_tokens, ignore_eos=True, temperature=0.0, output_kind=kind)


def distinct_prompt(index: int, num_tokens: int) -> list[int]:
    """Token ids that share no prefix with another index's (no prefix-cache hits between requests)."""
    return [10 + (index * 131 + 7 * i) % 4000 for i in range(num_tokens)]


def preemption_scenario(num_requests: int = 6, max_tokens: int = 40) -> list[TraceRequest]:
    """Prompts of 40, 60, ... tokens: under `SCARCE_KV` they are chunked, then some are preempted."""
    return [TraceRequest(f"req-{i}", distinct_prompt(i, 40 + 20 * i), max_tokens) for i in range(num_requests)]


def equal_lengths_trace(num_requests: int, max_tokens: int = 16, prompt_len: int = 16) -> list[TraceRequest]:
    """Every request wants the same number of tokens: static batches never wait on a straggler."""
    return [TraceRequest(f"eq-{i}", distinct_prompt(i, prompt_len), max_tokens) for i in range(num_requests)]


def mixed_lengths_trace(batch_size: int, num_batches: int, long: int = 64, short: int = 2,
                        prompt_len: int = 16) -> list[TraceRequest]:
    """Each batch of `batch_size` has one long request and short ones: static batching idles its slots."""
    return [TraceRequest(f"mix-{i}", distinct_prompt(i, prompt_len), long if i % batch_size == 0 else short)
            for i in range(batch_size * num_batches)]


def benchmark_traces(batch_size: int = 8, num_batches: int = 8) -> dict[str, list[TraceRequest]]:
    """The lab's two workloads, by name.

    Counted in engine steps, static batching of the mixed one takes num_batches x 64 steps, mostly
    with one busy slot; continuous batching keeps the slots busy and needs ~5x fewer
    (`labs.lab3_continuous_batching.costs.expected_steps` gives the exact counts).
    """
    return {"equal lengths": equal_lengths_trace(batch_size * num_batches),
            "mixed lengths": mixed_lengths_trace(batch_size, num_batches)}
