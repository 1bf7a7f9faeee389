"""Lab 1 exercises: predict what the engine will do, then check against the real vLLM.

Fill in each function, then run `make grade LAB=1`. The tests compare your answers with the
live engine (tests/exercises/test_lab1_basic_inference.py), not with fixed numbers.
"""

from __future__ import annotations

from typing import Any


def count_prompt_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """How many prompt tokens will vLLM's `llm.chat(messages)` feed the model?

    Hint: the chat template turns messages into one prompt string with special tokens;
    vLLM tokenizes that string. `tokenizer.apply_chat_template` can do both steps.

    Args:
        tokenizer: the Hugging Face tokenizer of the model (`llm.get_tokenizer()`).
        messages: chat messages, e.g. [{"role": "user", "content": "..."}].

    Returns:
        The number of prompt tokens, including the template's special tokens and the
        assistant header that asks the model to answer.
    """
    raise NotImplementedError("Exercise 1: count the prompt tokens vLLM will see")


def num_blocks_for_tokens(num_tokens: int, block_size: int) -> int:
    """How many KV-cache blocks does vLLM allocate for a prompt of `num_tokens` tokens?

    PagedAttention stores K/V in fixed-size blocks of `block_size` tokens; a partly filled last
    block still takes a whole block.
    """
    raise NotImplementedError("Exercise 2: blocks needed for a prompt")


def kv_cache_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """Bytes of KV cache one token occupies across the whole model.

    Every attention layer stores a key and a value vector per KV head for every token.
    (Grouped-query attention: count KV heads, not query heads.)
    """
    raise NotImplementedError("Exercise 3: KV-cache bytes per token")


def greedy_decode(model: Any, prompt_token_ids: list[int], max_new_tokens: int,
                  eos_token_ids: set[int]) -> list[int]:
    """Greedy decoding with a Hugging Face causal LM, one token at a time.

    It must produce the same tokens as vLLM with `SamplingParams(temperature=0)`. Stop after
    `max_new_tokens` tokens, or right after emitting a token in `eos_token_ids` (include it,
    as vLLM does in `output.token_ids`).

    Hint: `model(input_ids=..., past_key_values=..., use_cache=True)` returns `.logits`
    of shape (batch, seq_len, vocab) and `.past_key_values` to feed back next step.

    Returns:
        The generated token ids (not including the prompt).
    """
    raise NotImplementedError("Exercise 4: a greedy decode loop")
