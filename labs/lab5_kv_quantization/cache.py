"""A quantized paged KV cache inside the mini engine: each layer's attention writes 1-byte K/V.

The mini engine's `PagedAttention` (labs/core/mini/attention.py) is subclassed, not edited: the cache
holds int8/fp8 codes (plus a float32 scale per token for per-token schemes); attention
dequantizes the blocks a step reads back to the model's dtype and runs the same paged (decode)
and dense causal (prefill) paths as before. vLLM's fp8 kernels do the same, dequantizing inside
the attention kernel instead of into a temporary tensor.
"""

from __future__ import annotations

from typing import Any

import torch

from labs.lab5_kv_quantization.calibrate import KVAmax, attention_modules
from labs.lab5_kv_quantization.quantize import SCALE_DTYPE, KVQuantScheme, dequantize, get_scheme, quantize_with_scheme
from labs.core.mini.attention import AttentionMetadata, PagedAttention
from labs.core.mini.llm import LLM
from labs.core.grading import engine_part


class QuantizedPagedAttention(PagedAttention):
    """One layer's attention over a quantized paged KV cache."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scheme: KVQuantScheme,
                 key_scale: torch.Tensor | None, value_scale: torch.Tensor | None) -> None:
        """Args:
            num_heads, num_kv_heads, head_dim: the layer's shape.
            scheme: how K/V are quantized.
            key_scale, value_scale: this layer's static scales ((1, 1, 1) or (1, num_kv_heads, 1));
                None for per-token schemes.
        """
        super().__init__(num_heads, num_kv_heads, head_dim)
        self.scheme = scheme
        self.key_scale, self.value_scale = key_scale, value_scale
        self.key_scale_cache: torch.Tensor | None = None  # (num_blocks, block_size, 1, 1), per-token only
        self.value_scale_cache: torch.Tensor | None = None

    def allocate(self, num_blocks: int, block_size: int, device: torch.device) -> None:
        """Allocate this layer's cache: 1-byte codes, plus per-token scales if the scheme has them."""
        shape = (num_blocks, block_size, self.num_kv_heads, self.head_dim)
        self.key_cache = torch.zeros(shape, dtype=self.scheme.storage_dtype, device=device)
        self.value_cache = torch.zeros(shape, dtype=self.scheme.storage_dtype, device=device)
        if not self.scheme.is_static:
            self.key_scale_cache = torch.ones(num_blocks, block_size, 1, 1, dtype=SCALE_DTYPE, device=device)
            self.value_scale_cache = torch.ones(num_blocks, block_size, 1, 1, dtype=SCALE_DTYPE, device=device)
        if self.key_scale is not None:
            self.key_scale, self.value_scale = self.key_scale.to(device), self.value_scale.to(device)

    def cache_tensors(self) -> list[torch.Tensor]:
        """Everything this layer keeps per cache slot (codes and per-token scales)."""
        return [t for t in (self.key_cache, self.value_cache, self.key_scale_cache, self.value_scale_cache)
                if t is not None]

    def _write(self, cache: torch.Tensor, scale_cache: torch.Tensor | None, x: torch.Tensor,
               static_scale: torch.Tensor | None, slot_mapping: torch.Tensor) -> None:
        q, scale = quantize_with_scheme(x, self.scheme, static_scale)
        # index_copy_ has no fp8 kernel on CPU: copy the same bytes through a uint8 view.
        slots = cache.view(-1, self.num_kv_heads, self.head_dim).view(torch.uint8)
        slots.index_copy_(0, slot_mapping, q.view(torch.uint8))
        if scale_cache is not None:
            scale_cache.view(-1, 1, 1).index_copy_(0, slot_mapping, scale)

    def _read(self, cache: torch.Tensor, scale_cache: torch.Tensor | None, static_scale: torch.Tensor | None,
              index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Dequantize rows `index` of the cache viewed as (num_rows, ...) (rows = blocks or slots)."""
        rows = cache.index_select(0, index)
        scale = static_scale if scale_cache is None else scale_cache.index_select(0, index)
        return dequantize(rows, scale, dtype)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attn_metadata: AttentionMetadata) -> torch.Tensor:
        """As `PagedAttention.forward`, through the quantized cache (shapes the same)."""
        self._write(self.key_cache, self.key_scale_cache, key, self.key_scale, attn_metadata.slot_mapping)
        self._write(self.value_cache, self.value_scale_cache, value, self.value_scale, attn_metadata.slot_mapping)

        output = torch.empty_like(query)
        if attn_metadata.decode_token_indices.numel():
            rows = attn_metadata.decode_token_indices
            block_tables = attn_metadata.decode_block_tables  # (num_decodes, max_num_blocks)
            # Dequantize only the blocks these sequences read, laid out in table order; the
            # reference paged attention then reads them through an identity block table.
            flat_block_ids = block_tables.flatten()
            key_blocks = self._read(self.key_cache, self.key_scale_cache, self.key_scale, flat_block_ids, query.dtype)
            value_blocks = self._read(self.value_cache, self.value_scale_cache, self.value_scale, flat_block_ids,
                                      query.dtype)  # (num_decodes * max_num_blocks, block_size, num_kv_heads, head_dim)
            identity = torch.arange(flat_block_ids.numel(), device=query.device).view(block_tables.shape)
            output[rows] = engine_part("lab2_paged_attention").paged_attention(query[rows], key_blocks, value_blocks, identity,
                                           attn_metadata.decode_seq_lens, self.scale)
        key_scale_slots = None if self.key_scale_cache is None else self.key_scale_cache.view(-1, 1, 1)
        value_scale_slots = None if self.value_scale_cache is None else self.value_scale_cache.view(-1, 1, 1)
        key_slots = self.key_cache.view(-1, self.num_kv_heads, self.head_dim)
        value_slots = self.value_cache.view(-1, self.num_kv_heads, self.head_dim)
        for chunk in attn_metadata.prefills:
            slots = chunk.context_slot_mapping
            output[chunk.query_start:chunk.query_end] = self._prefill_attention(
                query[chunk.query_start:chunk.query_end],
                self._read(key_slots, key_scale_slots, self.key_scale, slots, query.dtype),
                self._read(value_slots, value_scale_slots, self.value_scale, slots, query.dtype))
        return output


def install_quantized_kv_cache(mini_llm: LLM, scheme: KVQuantScheme | str, amax: KVAmax | None) -> LLM:
    """Swap every layer's attention of `mini_llm` for a quantized one and release the bf16 cache.

    Call it before any request runs (the bf16 cache's contents are dropped).

    Args:
        mini_llm: a fresh `labs.core.mini.llm.LLM`.
        scheme: a scheme or its name.
        amax: calibration result (needed by static schemes; see `labs.lab5_kv_quantization.calibrate`).

    Returns:
        The same LLM, now with a quantized KV cache (its `kv_quant_scheme` attribute says which).
    """
    scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
    runner = mini_llm.llm_engine.model_runner
    num_blocks, block_size = runner.kv_cache.shape[2], runner.block_size
    scales = amax.scales(scheme) if amax is not None else None
    if scheme.is_static and scales is None:
        raise ValueError(f"{scheme.name} needs calibrated scales: pass amax=labs.lab5_kv_quantization.calibrate.calibrate(...)")
    for layer_idx, (layer, old) in enumerate(zip(mini_llm.llm_engine.model_runner.model.model.layers,
                                                 attention_modules(mini_llm))):
        key_scale, value_scale = (scales[0][layer_idx], scales[1][layer_idx]) if scales else (None, None)
        attn = QuantizedPagedAttention(old.num_heads, old.num_kv_heads, old.head_dim, scheme, key_scale, value_scale)
        attn.allocate(num_blocks, block_size, runner.device)
        layer.self_attn.attn = attn
    runner.kv_cache = torch.empty(0)  # the layers no longer hold views of it: its memory is freed
    mini_llm.kv_quant_scheme = scheme
    return mini_llm


def kv_cache_nbytes(mini_llm: LLM) -> int:
    """Bytes the KV cache of a mini LLM really holds, quantized or not, per-token scales included."""
    total = 0
    for attn in attention_modules(mini_llm):
        tensors = attn.cache_tensors() if isinstance(attn, QuantizedPagedAttention) else [attn.key_cache,
                                                                                           attn.value_cache]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def make_quantized_llm(model: str, scheme: KVQuantScheme | str, amax: KVAmax | None, **config_kwargs: Any) -> LLM:
    """A new mini LLM with a quantized KV cache (config_kwargs as for `labs.core.mini.llm.LLM`)."""
    return install_quantized_kv_cache(LLM(model, **config_kwargs), scheme, amax)
