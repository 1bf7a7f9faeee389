"""What the weights and the KV cache take, in bytes, as vLLM itself sizes them (Labs 5 and 6).

Why vLLM's own figures: the KV cache is allocated from a per-layer `FullAttentionSpec`
(`page_size_bytes` of one block), and an fp8 cache stores scaled uint8 codes; computing the
same numbers by hand would drift from what the engine really allocates. Weight bytes come
from the checkpoint, because vLLM's CPU backend repacks the parameters (see model_weight_bytes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labs.core.vllm_internals.version import check_vllm_version
from labs.core.vllm_internals.live_engine import llm_engine, model, model_runner, scheduler


def model_weight_bytes(llm_or_engine: Any) -> int:
    """Bytes of the model's weights in the dtype the engine runs them in: what a decode step reads.

    Why not `sum(p.numel() for p in model.parameters())`: vLLM's CPU backend repacks every linear
    layer's weight for its own GEMM kernel (a `cpu_linear` closure) and leaves an empty parameter
    behind, so the parameters would show about a quarter of the weights. The checkpoint's tensor
    shapes (safetensors headers; nothing is loaded) times the engine's dtype size do not move.
    A tied embedding is stored once, and is read once per step, as the LM head.
    """
    import torch
    from safetensors import safe_open

    config = llm_engine(llm_or_engine).model_config
    numel = 0
    for path in sorted(Path(config.model).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                shape = f.get_slice(name).get_shape()
                numel += int(torch.tensor(shape).prod()) if shape else 1
    if numel == 0:  # not a local safetensors folder: fall back to what the parameters hold
        return sum(p.numel() * p.element_size() for p in model(llm_or_engine).parameters())
    return numel * torch.empty((), dtype=config.dtype).element_size()


def kv_cache_bytes_per_token(llm_or_engine: Any) -> int:
    """KV cache bytes one token occupies across all layers, from the engine's own KV cache spec.

    Why the spec: `page_size_bytes` of a group is what one block of one layer really takes
    (K and V, all KV heads, the cache dtype), so this matches what the engine allocated.
    """
    groups = scheduler(llm_or_engine).kv_cache_config.kv_cache_groups
    return sum(len(g.layer_names) * g.kv_cache_spec.page_size_bytes // g.kv_cache_spec.block_size for g in groups)


def kv_cache_spec_bytes_per_token(num_layers: int, num_kv_heads: int, head_size: int, kv_cache_dtype: str = "auto",
                                  model_dtype: Any = None, block_size: int = 32) -> int:
    """KV bytes per token that vLLM would allocate for a model shape, without building an engine.

    Why: vLLM sizes its cache from a `FullAttentionSpec` per layer (page_size_bytes of one block);
    building that spec for any shape and `kv_cache_dtype` ("auto", "fp8", "fp8_e5m2", ...) gives
    vLLM's own figure for configurations no engine here runs. The storage dtype comes from
    `STR_DTYPE_TO_TORCH_DTYPE` (every fp8 variant is stored as uint8 codes).

    Args:
        num_layers, num_kv_heads, head_size: the model's attention shape.
        kv_cache_dtype: as `LLM(kv_cache_dtype=...)`; "auto" stores the model's dtype.
        model_dtype: the model's torch dtype (default bfloat16).
        block_size: tokens per block (bytes per token do not depend on it).
    """
    check_vllm_version()
    import torch
    from vllm.utils.torch_utils import STR_DTYPE_TO_TORCH_DTYPE
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    dtype = (model_dtype or torch.bfloat16) if kv_cache_dtype == "auto" else STR_DTYPE_TO_TORCH_DTYPE[kv_cache_dtype]
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=num_kv_heads, head_size=head_size, dtype=dtype)
    return num_layers * spec.page_size_bytes // block_size


def attention_kv_scales(llm_or_engine: Any) -> dict[str, tuple[float, float]]:
    """(k_scale, v_scale) of every attention layer of a live engine, by layer name.

    Why: vLLM's fp8 KV cache stores K / k_scale and V / v_scale; the scales live on each
    `Attention` layer (`_k_scale_float`, `_v_scale_float`), set from the checkpoint's
    quantization config or left at 1.0. The layers are found where the model runner registers
    them, `compilation_config.static_forward_context`.
    """
    context = model_runner(llm_or_engine).compilation_config.static_forward_context
    return {name: (float(layer._k_scale_float), float(layer._v_scale_float))
            for name, layer in context.items() if hasattr(layer, "_k_scale_float")}
