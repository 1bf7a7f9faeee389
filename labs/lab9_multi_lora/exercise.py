"""Lab 9 exercises: the arithmetic of serving several LoRA adapters from one engine.

Fill in each function, then run `make grade LAB=9`. The tests (tests/exercises/test_lab9_multi_lora.py)
compare your answers with vLLM's own code, not with fixed numbers: its CPU punica wrapper (the LoRA
matmuls of a mixed batch), its `PEFTHelper` (how adapter_config.json becomes a scaling factor), and
the A/B tensors a live engine allocated for its adapter slots.
"""

from __future__ import annotations

from typing import Any


def lora_forward(x: Any, weight: Any, lora_a: Any, lora_b: Any, scalings: list[float],
                 token_slots: list[int]) -> Any:
    """A linear layer of a batch whose tokens use different adapters: y = x W^T + s * (x A^T) B^T per token.

    vLLM keeps every loaded adapter in a slot: for each LoRA-wrapped layer, slot i holds A_i (r x in)
    and B_i (out x r). A batch mixes requests with different adapters, so each token t carries the
    slot of its request's adapter, or -1 for a request without one. Row t of the output is
      x_t W^T                                        when token_slots[t] == -1,
      x_t W^T + scalings[i] * (x_t A_i^T) B_i^T      when token_slots[t] == i.
    (vLLM folds the scaling into B when it loads an adapter; here it is passed separately.)
    Beware of Python's negative indexing: -1 means "no adapter", never "the last slot".

    Args:
        x: (num_tokens, in) activations, a torch tensor.
        weight: (out, in) base weight W.
        lora_a: (num_slots, r, in) the A of every slot.
        lora_b: (num_slots, out, r) the B of every slot.
        scalings: per slot, the adapter's scaling (alpha / r, or alpha / sqrt(r) with rsLoRA).
        token_slots: per token, its slot, or -1.

    Returns:
        (num_tokens, out) tensor in x's dtype.

    Hint: gather each token's A and B with `lora_a[slots]` and contract with `torch.einsum`; that is
    what vLLM's torch ops do (vllm/lora/ops/torch_ops/lora_ops.py, `bgmv_shrink` / `bgmv_expand`).
    """
    raise NotImplementedError("Exercise 1: a mixed-adapter LoRA linear layer")


def lora_rank_and_scaling(adapter_config: dict, module_name: str) -> tuple[int, float]:
    """The rank and scaling vLLM uses for one module of an adapter, from its adapter_config.json.

    PEFT writes `r` and `lora_alpha` for the whole adapter, and may override them per module:
      - `rank_pattern` {pattern: rank} and `alpha_pattern` {pattern: alpha}: a pattern matches
        `module_name` when the name ends with it at a "." boundary (regex `(.*\\.)?(pattern)$`);
        the first matching pattern, in dict order, wins; no match: `r` / `lora_alpha`;
      - scaling = alpha / rank, or alpha / sqrt(rank) when `use_rslora` is true (rank-stabilised
        LoRA keeps the update's size steady as the rank grows).

    Args:
        adapter_config: the parsed adapter_config.json (keys r, lora_alpha, and maybe use_rslora,
            rank_pattern, alpha_pattern).
        module_name: e.g. "model.layers.0.self_attn.q_proj".

    Returns:
        (rank, scaling).
    """
    raise NotImplementedError("Exercise 2: rank and scaling from adapter_config.json")


def lora_slot_bytes(config: Any, max_lora_rank: int, target_modules: list[str], dtype_bytes: int) -> int:
    """Bytes vLLM allocates for ONE adapter slot of a Qwen2/Llama model, over all decoder layers.

    At start, `enable_lora=True` wraps each targeted projection and preallocates, per slot, an A of
    (max_lora_rank x in) and a B of (out x max_lora_rank): at `max_lora_rank`, whatever the rank of
    the adapters loaded later. The projections of one decoder layer (head_dim = config.head_dim if
    set, else hidden / heads):
      q_proj: hidden -> heads * head_dim          k_proj, v_proj: hidden -> kv_heads * head_dim
      o_proj: heads * head_dim -> hidden          gate_proj, up_proj: hidden -> intermediate
      down_proj: intermediate -> hidden
    Only the projections named in `target_modules` count (vLLM's `target_modules` setting).

    Args:
        config: a Hugging Face config (hidden_size, intermediate_size, num_hidden_layers,
            num_attention_heads, num_key_value_heads, maybe head_dim).
        max_lora_rank: the engine's max_lora_rank.
        target_modules: projection names, e.g. ["q_proj", "k_proj", "v_proj", "o_proj"].
        dtype_bytes: bytes per element (the LoRA dtype: the model's, 2 for bfloat16).

    Returns:
        Bytes per slot (an int); `max_loras` slots cost that many times more.
    """
    raise NotImplementedError("Exercise 3: the memory of one adapter slot")
