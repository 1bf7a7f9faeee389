"""Lab 2's predict-then-see questions: the real values, read from the live engine.

Each function runs requests on the live engine and returns what the learner's guess is checked
against with `labs.core.predict.check_number`; block sizes and token counts come from the
engine, so the questions hold on any model and any backend.

    prompt_blocks    how many KV blocks a prompt of N tokens takes (its block table after prefill)
    prefix_hit       how many prompt tokens a second request sharing a prefix skips (prefix cache)
    fill_after_prefill   what share of the slots of the blocks in use hold a token (`kv_usage`)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labs.core import vllm_internals as vi
from labs.core.live import EngineObserver
from labs.lab2_paged_attention.kv_usage import KVUsage, usage_over_steps
from labs.lab2_paged_attention.paged import token_prompt


@dataclass(frozen=True)
class PromptBlocks:
    num_tokens: int
    block_size: int
    block_ids: list[int]  # the request's block table once its whole prompt is computed

    @property
    def num_blocks(self) -> int:
        return len(self.block_ids)


def prompt_blocks(llm: Any, num_tokens: int = 100, seed: int = 4100) -> PromptBlocks:
    """Run one prompt of exactly `num_tokens` tokens and read its block table after its prefill.

    Args:
        llm: an idle `vllm.LLM` (engine core in this process).
        num_tokens: the prompt's length.
        seed: picks the prompt's token ids.
    """
    from vllm import SamplingParams

    observer = EngineObserver(llm)
    observer.add_request("blocks", token_prompt(num_tokens, seed=seed),
                         SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True))
    block_ids: list[int] = []
    computed = 0
    while observer.has_unfinished_requests():
        obs = observer.step()
        computed += obs.num_cached_tokens.get("blocks", 0) + obs.num_scheduled_tokens.get("blocks", 0)
        if computed >= num_tokens and not block_ids:  # the step that computed the prompt's last token
            block_ids = list(obs.block_tables.get("blocks", []))
    return PromptBlocks(num_tokens, vi.kv_cache_snapshot(llm).block_size, block_ids)


@dataclass(frozen=True)
class PrefixHit:
    shared_len: int  # tokens both prompts start with
    block_size: int
    first_cached: int  # prompt tokens the first request found cached (0 on a fresh engine)
    second_cached: int  # ... the second one: the scheduler's num_cached_tokens when it admitted it
    second_scheduled: int  # tokens the scheduler had the second request compute in its prefill step
    second_output_cached: int  # RequestOutput.num_cached_tokens of the second request (same figure)
    second_prompt_len: int


def prefix_hit(llm: Any, shared_len: int = 100, suffix_len: int = 20, seed: int = 4200) -> PrefixHit:
    """Two requests, one after the other, whose prompts share their first `shared_len` tokens.

    The first computes and caches the prefix's full blocks; the second looks its own block hashes
    up and skips what it finds. Only full blocks are hashed and cached, so the skip is a multiple
    of the block size.

    Args:
        llm: an idle `vllm.LLM` with prefix caching on.
        shared_len: tokens of the common prefix.
        suffix_len: each request's own tokens after it.
        seed: picks the prefix (and, from it, the suffixes).
    """
    from vllm import SamplingParams

    prefix = token_prompt(shared_len, seed=seed)
    params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    cached, scheduled, outputs = [], [], []
    for i in range(2):
        observer = EngineObserver(llm)
        request_id = f"prefix-{i}"
        observer.add_request(request_id, prefix + token_prompt(suffix_len, seed=seed + 1 + i), params)
        first = observer.step()
        cached.append(first.num_cached_tokens.get(request_id, 0))
        scheduled.append(first.num_scheduled_tokens.get(request_id, 0))
        observer.run()
        outputs.append(observer.outputs[request_id])
    return PrefixHit(shared_len, vi.kv_cache_snapshot(llm).block_size, cached[0], cached[1], scheduled[1],
                     outputs[1].num_cached_tokens or 0, len(outputs[1].prompt_token_ids))


def half_full_lengths(block_size: int, num_requests: int = 8) -> list[int]:
    """Prompts one token longer than a block: each takes two blocks and fills the second with 1 token."""
    return [block_size + 1] * num_requests


@dataclass(frozen=True)
class UsageRun:
    prompt_lens: list[int]
    rows: list[KVUsage]  # kv_usage after every step

    @property
    def after_prefill(self) -> KVUsage:
        """The first step after which every prompt token is computed (and no output token yet)."""
        for row in self.rows:
            if row.tokens_held >= sum(self.prompt_lens):
                return row
        raise RuntimeError("the prompts were never all computed at once")


def fill_after_prefill(llm: Any, num_requests: int = 8, max_tokens: int | None = None) -> UsageRun:
    """Prompts of block_size + 1 tokens, decoded until their second block is full; `kv_usage` per step.

    Args:
        llm: an idle `vllm.LLM`.
        num_requests: how many such prompts run together.
        max_tokens: output tokens each (default block_size - 1: the last step fills every block).
    """
    block_size = vi.kv_cache_snapshot(llm).block_size
    lens = half_full_lengths(block_size, num_requests)
    return UsageRun(lens, usage_over_steps(llm, lens, max_tokens or block_size - 1))
