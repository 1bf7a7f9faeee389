"""A deliberately wrong Lab 9 implementation: the grader must fail it (see test_lab9_multi_lora.py)."""

from __future__ import annotations

from typing import Any

import torch


def lora_forward(x: Any, weight: Any, lora_a: Any, lora_b: Any, scalings: list[float],
                 token_slots: list[int]) -> Any:
    # Classic mistake: index the slots with the token's value as is, so -1 (no adapter) silently
    # picks the last slot: Python's negative indexing (vLLM's CPU ops do the same; its engine
    # keeps a spare, empty last slot, see Lab 9's MAX_LORAS).
    slots = torch.tensor(token_slots, dtype=torch.long)
    a, b = lora_a[slots].to(x.dtype), lora_b[slots].to(x.dtype)
    scale = torch.tensor(scalings, dtype=x.dtype)[slots].unsqueeze(-1)
    return x @ weight.T + scale * torch.einsum("nr,nor->no", torch.einsum("ni,nri->nr", x, a), b)


def lora_rank_and_scaling(adapter_config: dict, module_name: str) -> tuple[int, float]:
    # Classic mistake: ignore use_rslora and the per-module patterns: alpha / r for every module.
    return adapter_config["r"], adapter_config["lora_alpha"] / adapter_config["r"]


def lora_slot_bytes(config: Any, max_lora_rank: int, target_modules: list[str], dtype_bytes: int) -> int:
    # Classic mistake: k_proj and v_proj as wide as q_proj (forgetting grouped-query attention).
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_out = config.num_attention_heads * head_dim
    shapes = {"q_proj": (hidden, q_out), "k_proj": (hidden, q_out), "v_proj": (hidden, q_out),
              "o_proj": (q_out, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
              "down_proj": (inter, hidden)}
    per_layer = sum(max_lora_rank * (i + o) for n, (i, o) in shapes.items() if n in target_modules)
    return per_layer * config.num_hidden_layers * dtype_bytes
