"""Lab 5 exercises: quantize the KV cache, predict its size, find the layer that suffers most.

Fill in each function, then run `make grade LAB=5`. tests/exercises/test_lab5_kv_quantization.py checks
your answers against PyTorch's fp8 dtypes, vLLM's own KV cache sizing (the live engine and its
KV cache spec), the workbook's quantized mini engine, and the per-layer errors it measures.
"""

from __future__ import annotations

import torch


def quantize_int8_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one dynamic scale per token (shared by all its KV heads).

    Hints:
    - amax over KV heads and head_dim of each token; scale = amax / 127 (not 128: -x must
      quantize to -q), clamped to at least 1e-8 so an all-zero token does not divide by zero.
    - q = round(x / scale), clamped to [-127, 127], stored as torch.int8. Compute in float32.

    Args:
        x: (num_tokens, num_kv_heads, head_dim) keys or values, any float dtype.

    Returns:
        (q, scale): q (num_tokens, num_kv_heads, head_dim) int8; scale (num_tokens, 1, 1) float32.
    """
    raise NotImplementedError("Exercise 1: int8 per-token quantization")


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor, fp8_dtype: torch.dtype) -> torch.Tensor:
    """x / scale stored as fp8 (torch.float8_e4m3fn or torch.float8_e5m2), saturating.

    Hint: casting to fp8 rounds to the nearest representable value, but a value beyond
    torch.finfo(fp8_dtype).max becomes NaN (e4m3fn) or inf (e5m2): clamp first.

    Args:
        x: (..., head_dim) float tensor.
        scale: a float32 tensor broadcastable to x (a static, calibrated scale).
        fp8_dtype: the fp8 storage dtype.
    """
    raise NotImplementedError("Exercise 2: fp8 quantization with a static scale")


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q * scale computed in float32, returned as `dtype` (int8 or fp8 codes, any broadcastable scale)."""
    raise NotImplementedError("Exercise 3: dequantize")


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, scheme: str) -> int:
    """KV cache bytes one token takes over the whole model, per-token scales included.

    Schemes: "bf16" (vLLM's kv_cache_dtype="auto" for a bf16 model), "fp8" / "fp8_e4m3" /
    "fp8_e5m2" (vLLM's fp8 caches: static per-layer scales), "int8_per_head" (static scales per
    layer and KV head), "int8_per_token" (one float32 scale per token, per layer, for K and for V).
    Static scales are paid once per model, not per token: leave them out.
    """
    raise NotImplementedError("Exercise 4: KV bytes per token")


def find_worst_layer(layer_qkv: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> tuple[int, list[float]]:
    """Which layer's attention output suffers most from an int8 per-token KV cache?

    For each layer: causal attention of the sequence with its exact K/V, and with K and V passed
    through your `quantize_int8_per_token` + `dequantize`; the error is
    ||approx - exact|| / ||exact|| over the whole output.

    Hints: compute in float32; queries have more heads than K/V (grouped-query attention:
    `scaled_dot_product_attention(..., is_causal=True, enable_gqa=True)` on (heads, tokens,
    head_dim) tensors); softmax scale head_dim ** -0.5 (SDPA's default).

    Args:
        layer_qkv: per layer, (query (num_tokens, num_heads, head_dim), key and value
            (num_tokens, num_kv_heads, head_dim)) of one sequence, as the bf16 model produced them.

    Returns:
        (index of the worst layer, the error of every layer).
    """
    raise NotImplementedError("Exercise 5: find the layer with the largest quantization error")
