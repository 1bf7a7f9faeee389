"""Reference solutions for labs/lab5_kv_quantization/exercise.py: KV-cache quantization."""

from __future__ import annotations

import torch
import torch.nn.functional as F

FP8_SCHEMES = {"fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}  # bytes per stored element


def quantize_int8_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    amax = x.float().abs().amax(dim=(1, 2), keepdim=True)  # (num_tokens, 1, 1): one scale per token
    scale = (amax / 127.0).clamp(min=1e-8)  # 127, not 128: symmetric; clamp: an all-zero token
    q = (x.float() / scale).round().clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor, fp8_dtype: torch.dtype) -> torch.Tensor:
    limit = torch.finfo(fp8_dtype).max
    return (x.float() / scale).clamp(-limit, limit).to(fp8_dtype)  # saturate: e4m3fn has no inf, overflow is NaN


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale).to(dtype)


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, scheme: str) -> int:
    elements = 2 * num_layers * num_kv_heads * head_dim  # K and V of every layer and KV head
    if scheme == "bf16":
        return elements * 2
    if scheme in FP8_SCHEMES or scheme == "int8_per_head":
        return elements  # static scales: a few floats per layer, not per token
    if scheme == "int8_per_token":
        return elements + 2 * num_layers * 4  # + one float32 scale per token, layer, K and V
    raise ValueError(f"unknown scheme {scheme!r}")


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """(num_tokens, num_heads, head_dim) causal GQA attention of one sequence, float32."""
    out = F.scaled_dot_product_attention(query.float().transpose(0, 1), key.float().transpose(0, 1),
                                         value.float().transpose(0, 1), is_causal=True, enable_gqa=True)
    return out.transpose(0, 1)


def find_worst_layer(layer_qkv: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> tuple[int, list[float]]:
    errors = []
    for query, key, value in layer_qkv:
        exact = causal_attention(query, key, value)
        key_q, value_q = (dequantize(*quantize_int8_per_token(t), torch.float32) for t in (key, value))
        approx = causal_attention(query, key_q, value_q)
        errors.append(float((approx - exact).norm() / exact.norm()))
    return max(range(len(errors)), key=errors.__getitem__), errors
