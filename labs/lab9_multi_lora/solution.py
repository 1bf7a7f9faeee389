"""Lab 9 reference solutions (see exercise.py for what each function must do)."""

from __future__ import annotations

import math
import re
from typing import Any

import torch


def lora_forward(x: Any, weight: Any, lora_a: Any, lora_b: Any, scalings: list[float],
                 token_slots: list[int]) -> Any:
    y = x @ weight.T  # (num_tokens, out)
    slots = torch.tensor(token_slots, dtype=torch.long)
    has_adapter = slots >= 0  # -1 must not wrap around to the last slot
    if has_adapter.any():
        used = slots[has_adapter]
        a, b = lora_a[used].to(x.dtype), lora_b[used].to(x.dtype)  # (n, r, in), (n, out, r)
        scale = torch.tensor(scalings, dtype=x.dtype)[used].unsqueeze(-1)  # (n, 1)
        shrunk = torch.einsum("ni,nri->nr", x[has_adapter], a)  # (n, r)
        y[has_adapter] += scale * torch.einsum("nr,nor->no", shrunk, b)
    return y


def _match(pattern: dict, name: str) -> Any:
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return None


def lora_rank_and_scaling(adapter_config: dict, module_name: str) -> tuple[int, float]:
    rank = _match(adapter_config.get("rank_pattern") or {}, module_name)
    alpha = _match(adapter_config.get("alpha_pattern") or {}, module_name)
    rank = adapter_config["r"] if rank is None else rank
    alpha = adapter_config["lora_alpha"] if alpha is None else alpha
    return rank, alpha / (math.sqrt(rank) if adapter_config.get("use_rslora") else rank)


def lora_slot_bytes(config: Any, max_lora_rank: int, target_modules: list[str], dtype_bytes: int) -> int:
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_out, kv_out = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    shapes = {"q_proj": (hidden, q_out), "k_proj": (hidden, kv_out), "v_proj": (hidden, kv_out),
              "o_proj": (q_out, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
              "down_proj": (inter, hidden)}
    per_layer = sum(max_lora_rank * (fan_in + fan_out) for name, (fan_in, fan_out) in shapes.items()
                    if name in target_modules)  # A: r x in, B: out x r
    return per_layer * config.num_hidden_layers * dtype_bytes
