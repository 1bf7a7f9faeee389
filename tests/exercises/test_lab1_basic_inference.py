"""Grades Lab 1's exercises against the live vLLM engine.

Runs the reference solution by default; `make grade LAB=1` (LABS_GRADE=learner) runs yours.
"""

from __future__ import annotations

from typing import Any

import pytest

from labs.core import vllm_internals as vi
from labs.core.grading import load_implementation
from labs.core.models.phrasebook import load_phrasebook, translation_messages

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def impl() -> Any:
    return load_implementation("lab1_basic")


@pytest.mark.parametrize("entry_index", [0, 57, 199])
def test_count_prompt_tokens(impl: Any, llm: Any, tokenizer: Any, entry_index: int) -> None:
    from vllm import SamplingParams

    messages = translation_messages(load_phrasebook()[entry_index].ja)
    (out,) = llm.chat([messages], SamplingParams(max_tokens=1), use_tqdm=False)
    assert impl.count_prompt_tokens(tokenizer, messages) == len(out.prompt_token_ids), \
        "vLLM fed the model a different number of prompt tokens"


@pytest.mark.parametrize("num_tokens_in_blocks", [(1, 0), (0, 1), (1, 1), (2, 0), (3, 5)])
def test_num_blocks_for_tokens(impl: Any, llm: Any, num_tokens_in_blocks: tuple[int, int]) -> None:
    """Prompt lengths around block boundaries; the truth is the block table vLLM allocates."""
    from vllm import SamplingParams

    block_size = vi.kv_cache_snapshot(llm).block_size
    full_blocks, extra = num_tokens_in_blocks
    num_tokens = max(1, full_blocks * block_size + extra)
    engine = llm.llm_engine
    engine.add_request("blocks", {"prompt_token_ids": [100 + i % 50 for i in range(num_tokens)]},
                       SamplingParams(max_tokens=2))  # 2: still running after the first step
    engine.step()  # prefill: the whole prompt is scheduled and its blocks allocated
    actual = len(vi.request_block_ids(llm, "blocks"))
    while engine.has_unfinished_requests():
        engine.step()
    predicted = impl.num_blocks_for_tokens(num_tokens, block_size)
    assert predicted == actual, f"{num_tokens} tokens, block_size {block_size}: vLLM used {actual} blocks"


def test_kv_cache_bytes_per_token(impl: Any, llm: Any) -> None:
    hf_config = llm.llm_engine.model_config.hf_config
    tensors = vi.kv_cache_tensors(llm)
    snap = vi.kv_cache_snapshot(llm)
    actual = sum(t.numel() * t.element_size() for t in tensors) // (tensors[0].shape[0] * snap.block_size)
    head_dim = hf_config.hidden_size // hf_config.num_attention_heads
    predicted = impl.kv_cache_bytes_per_token(hf_config.num_hidden_layers, hf_config.num_key_value_heads,
                                              head_dim, tensors[0].element_size())
    assert predicted == actual, "the live engine's KV cache holds a different number of bytes per token"


@pytest.mark.parametrize("entry_index", [3, 101, 250])
def test_greedy_decode_matches_vllm(impl: Any, llm: Any, hf_model: Any, tokenizer: Any, entry_index: int) -> None:
    from vllm import SamplingParams

    messages = translation_messages(load_phrasebook()[entry_index].ja)
    (out,) = llm.chat([messages], SamplingParams(temperature=0.0, max_tokens=32), use_tqdm=False)
    eos_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    got = impl.greedy_decode(hf_model, list(out.prompt_token_ids), 32, eos_ids)
    assert got == list(out.outputs[0].token_ids), \
        f"yours: {tokenizer.decode(got)!r}  vLLM: {out.outputs[0].text!r}"
