"""Lab 1's request trace reads the scheduler's real decisions, prefix-cache hits included."""

from __future__ import annotations

from typing import Any

import pytest

from labs.core import vllm_internals as vi
from labs.lab1_basic_inference.inference import trace_request
from labs.lab2_paged_attention.paged import token_prompt

pytestmark = pytest.mark.engine


def test_trace_shows_prefill_then_decode_and_prefix_cache_hits(llm: Any) -> None:
    from vllm import SamplingParams

    block_size = vi.kv_cache_snapshot(llm).block_size
    tokenizer = llm.get_tokenizer()
    prompt = tokenizer.decode(token_prompt(2 * block_size + 5, seed=4242))
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)

    cold = trace_request(llm, prompt, params)
    num_prompt_tokens = len(cold.prompt_token_ids)
    assert (cold.steps[0].num_scheduled_tokens, cold.steps[0].num_cached_tokens) == (num_prompt_tokens, 0)
    assert [s.num_scheduled_tokens for s in cold.steps[1:]] == [1] * (len(cold.steps) - 1)
    assert len(cold.output_token_ids) == 4 and cold.num_prompt_blocks == -(-num_prompt_tokens // block_size)

    warm = trace_request(llm, prompt, params)
    first = warm.steps[0]
    assert first.num_cached_tokens == (num_prompt_tokens - 1) // block_size * block_size > 0
    assert first.num_cached_tokens + first.num_scheduled_tokens == num_prompt_tokens
    assert warm.output_token_ids == cold.output_token_ids
