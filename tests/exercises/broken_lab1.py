"""A deliberately wrong Lab 1 implementation: the grader must fail it (see test_grading.py)."""

from __future__ import annotations

from typing import Any

from labs.lab1_basic_inference import solution as reference


def count_prompt_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    # Classic mistake: forgets the assistant header the chat template appends.
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def num_blocks_for_tokens(num_tokens: int, block_size: int) -> int:
    return num_tokens // block_size  # floor: forgets the partly filled last block


def kv_cache_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    return num_layers * num_kv_heads * head_dim * dtype_bytes  # forgets that V is stored beside K


greedy_decode = reference.greedy_decode  # one exercise right: its tests must still pass
