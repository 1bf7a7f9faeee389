"""Reference solutions for labs/lab1_basic_inference/exercise.py."""

from __future__ import annotations

from typing import Any

import torch


def count_prompt_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    # add_generation_prompt appends "<|im_start|>assistant\n": the model answers after it.
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def num_blocks_for_tokens(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)  # ceil division: a partial block is a whole block


def kv_cache_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes  # 2: one key and one value


@torch.inference_mode()
def greedy_decode(model: Any, prompt_token_ids: list[int], max_new_tokens: int,
                  eos_token_ids: set[int]) -> list[int]:
    input_ids = torch.tensor([prompt_token_ids])  # (1, num_prompt_tokens)
    past_key_values = None
    generated: list[int] = []
    for _ in range(max_new_tokens):
        out = model(input_ids=input_ids, past_key_values=past_key_values, use_cache=True)
        next_token = int(out.logits[0, -1].argmax())  # logits: (1, seq_len, vocab)
        generated.append(next_token)
        if next_token in eos_token_ids:
            break
        past_key_values = out.past_key_values
        input_ids = torch.tensor([[next_token]])  # (1, 1): only the new token; the rest is cached
    return generated
