"""Quantize and dequantize K/V, the four schemes of Lab 5, and what each costs in bytes.

A quantized value is `q = round_or_cast(x / scale)` and comes back as `q * scale`. What differs
between schemes is the storage dtype (1 byte instead of bf16's 2) and *where the scale comes
from*:
- static scales ("per_layer", "per_head") are fixed before serving from calibration prompts
  (amax / qmax) and cost no bytes per token; vLLM's fp8 KV cache works this way, with one
  `k_scale` and one `v_scale` per attention layer (1.0 unless the checkpoint ships scales).
- dynamic scales ("per_token") are computed from each token's own K (or V) as it is written, so
  they fit every token exactly, but are stored beside it in the cache: bytes per token grow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from labs.core.errors import WorkbookError

SCALE_DTYPE = torch.float32  # a per-token scale is 4 bytes: 4 / 128 = 3% on top of an int8 K row here
MIN_SCALE = 1e-8  # an all-zero token would give scale 0 and 0/0 on dequantize


class UnknownSchemeError(WorkbookError):
    """A KV quantization scheme name the workbook does not know."""


@dataclass(frozen=True)
class KVQuantScheme:
    """How one KV cache is quantized.

    Attributes:
        name: "fp8_e4m3", "fp8_e5m2", "int8_per_token" or "int8_per_head".
        storage_dtype: what the cache holds (1 byte each).
        granularity: "per_layer" (one static scale per layer, for K and for V), "per_head" (one
            static scale per layer and KV head) or "per_token" (one dynamic scale per token and
            layer, shared by its KV heads, stored in the cache).
        why: one sentence for the tables.
    """

    name: str
    storage_dtype: torch.dtype
    granularity: str
    why: str

    @property
    def is_static(self) -> bool:
        return self.granularity != "per_token"

    @property
    def qmax(self) -> float:
        return qmax(self.storage_dtype)


SCHEMES: dict[str, KVQuantScheme] = {s.name: s for s in (
    KVQuantScheme("fp8_e4m3", torch.float8_e4m3fn, "per_layer",
                  "3 mantissa bits, max 448: finer steps, what vLLM's kv_cache_dtype='fp8' means"),
    KVQuantScheme("fp8_e5m2", torch.float8_e5m2, "per_layer",
                  "2 mantissa bits, max 57344: range to spare, coarser steps"),
    KVQuantScheme("int8_per_token", torch.int8, "per_token",
                  "uniform 255 levels, each token scaled to its own amax (scale stored per token)"),
    KVQuantScheme("int8_per_head", torch.int8, "per_head",
                  "uniform 255 levels, one calibrated scale per layer and KV head (no per-token bytes)"),
)}


def get_scheme(name: str) -> KVQuantScheme:
    """The scheme called `name`, or an error that lists the known ones."""
    if name not in SCHEMES:
        raise UnknownSchemeError(f"unknown KV quantization scheme {name!r}; choose one of {sorted(SCHEMES)}")
    return SCHEMES[name]


def qmax(storage_dtype: torch.dtype) -> float:
    """Largest magnitude the storage dtype represents: 127 for int8 (symmetric), finfo.max for fp8."""
    if storage_dtype == torch.int8:
        return 127.0  # not 128: keeps the range symmetric, so -x quantizes to -q
    return float(torch.finfo(storage_dtype).max)


def scale_from_amax(amax: torch.Tensor, storage_dtype: torch.dtype) -> torch.Tensor:
    """The scale that maps `amax` onto the largest storable value (nothing clips, no level wasted)."""
    return (amax.to(SCALE_DTYPE) / qmax(storage_dtype)).clamp(min=MIN_SCALE)


def quantize(x: torch.Tensor, scale: torch.Tensor, storage_dtype: torch.dtype) -> torch.Tensor:
    """x / scale, saturated to the dtype's range, then rounded (int8) or cast (fp8).

    Why saturate: a static scale comes from calibration prompts; a later token may exceed their
    amax, and an unclamped fp8 cast turns it into NaN (e4m3fn has no infinity), an int8 cast wraps.

    Args:
        x: (..., head_dim) values, any float dtype.
        scale: broadcastable to x, float32.
        storage_dtype: torch.int8, torch.float8_e4m3fn or torch.float8_e5m2.
    """
    limit = qmax(storage_dtype)
    scaled = (x.float() / scale).clamp(-limit, limit)
    if storage_dtype == torch.int8:
        return scaled.round().to(torch.int8)
    return scaled.to(storage_dtype)  # round-to-nearest-even onto the fp8 grid


def dequantize(q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """q * scale in float32, returned as `out_dtype` (what attention computes in)."""
    return (q.float() * scale).to(out_dtype)


def per_token_scale(x: torch.Tensor, storage_dtype: torch.dtype) -> torch.Tensor:
    """Dynamic scale of each token: its amax over all KV heads and head_dim.

    Args:
        x: (num_tokens, num_kv_heads, head_dim).

    Returns:
        (num_tokens, 1, 1) float32.
    """
    return scale_from_amax(x.abs().amax(dim=(1, 2), keepdim=True), storage_dtype)


def quantize_with_scheme(x: torch.Tensor, scheme: KVQuantScheme,
                         static_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize one layer's new keys (or values) as `scheme` says.

    Args:
        x: (num_tokens, num_kv_heads, head_dim).
        scheme: the scheme.
        static_scale: this layer's calibrated scale, (1, 1, 1) per layer or (1, num_kv_heads, 1)
            per head; ignored (may be None) for per-token schemes.

    Returns:
        (q, scale): q like x in the storage dtype; scale (num_tokens, 1, 1) per token, else static_scale.
    """
    if scheme.is_static:
        if static_scale is None:
            raise WorkbookError(f"{scheme.name} uses calibrated scales: run labs.lab5_kv_quantization.calibrate first")
        scale = static_scale
    else:
        scale = per_token_scale(x, scheme.storage_dtype)
    return quantize(x, scale, scheme.storage_dtype), scale


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, scheme: KVQuantScheme | None) -> int:
    """KV cache bytes of one token over all layers, per-token scales included (None: bf16).

    Static scales are not per token: see `static_scale_bytes`.
    """
    if scheme is None:
        return 2 * num_layers * num_kv_heads * head_dim * 2  # K and V, 2 bytes each (bf16)
    data = num_kv_heads * head_dim * scheme.storage_dtype.itemsize
    scales = SCALE_DTYPE.itemsize if scheme.granularity == "per_token" else 0
    return 2 * num_layers * (data + scales)


def static_scale_bytes(num_layers: int, num_kv_heads: int, scheme: KVQuantScheme) -> int:
    """Bytes of a model's calibrated scales (K and V, every layer): paid once, not per token."""
    per_layer = {"per_layer": 1, "per_head": num_kv_heads, "per_token": 0}[scheme.granularity]
    return 2 * num_layers * per_layer * SCALE_DTYPE.itemsize
