"""Static scales from calibration prompts: the amax of every layer's K and V, per KV head.

Why calibrate: a static scale must be chosen before serving. Too small and large values clip;
too large and small values share few levels. The usual answer (llm-compressor's KV-cache scales,
which vLLM loads from a checkpoint: labs/lab5_kv_quantization/vllm_scales.py) is amax over representative
prompts divided by the dtype's largest value. Amax is recorded per KV head, the finest static
layout; a per-layer scale is its max over heads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from labs.lab5_kv_quantization.quantize import KVQuantScheme, scale_from_amax
from labs.core.mini.sampler import SamplingParams

CALIBRATION_MAX_TOKENS = 48  # the phrasebook's answers are < 20 tokens: the whole answer's K/V count


@dataclass
class KVAmax:
    """Largest |K| and |V| seen, per layer and KV head.

    Attributes:
        key: (num_layers, num_kv_heads) float32.
        value: (num_layers, num_kv_heads) float32.
        num_tokens: tokens whose K/V were seen (per layer).
    """

    key: torch.Tensor
    value: torch.Tensor
    num_tokens: int = 0

    def scales(self, scheme: KVQuantScheme) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """Per-layer static (key, value) scales for `scheme`, shaped to broadcast over
        (num_tokens, num_kv_heads, head_dim); None for per-token schemes (they need none)."""
        if not scheme.is_static:
            return None
        key, value = self.key, self.value
        if scheme.granularity == "per_layer":
            key, value = key.amax(dim=1, keepdim=True), value.amax(dim=1, keepdim=True)  # (num_layers, 1)
        key_scales = [scale_from_amax(layer_amax, scheme.storage_dtype).view(1, -1, 1) for layer_amax in key]
        value_scales = [scale_from_amax(layer_amax, scheme.storage_dtype).view(1, -1, 1) for layer_amax in value]
        return key_scales, value_scales


def attention_modules(mini_llm: Any) -> list[torch.nn.Module]:
    """Each decoder layer's attention module of a `labs.core.mini.llm.LLM` (where K/V enter the cache)."""
    return [layer.self_attn.attn for layer in mini_llm.llm_engine.model_runner.model.model.layers]


@contextmanager
def recording_amax(mini_llm: Any) -> Iterator[KVAmax]:
    """Record K/V amax of every layer while the block runs (forward pre-hooks, removed on exit).

    Why hooks on the attention module: its inputs are exactly the K (rotary applied) and V that
    get written to the cache, so the recorded amax is the amax of what will be quantized.
    """
    modules = attention_modules(mini_llm)
    num_kv_heads = modules[0].num_kv_heads
    amax = KVAmax(torch.zeros(len(modules), num_kv_heads), torch.zeros(len(modules), num_kv_heads))

    def hook_for(layer_idx: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            _, key, value, _ = args  # (num_tokens, num_kv_heads, head_dim) each
            amax.key[layer_idx] = torch.maximum(amax.key[layer_idx], key.abs().amax(dim=(0, 2)).float().cpu())
            amax.value[layer_idx] = torch.maximum(amax.value[layer_idx], value.abs().amax(dim=(0, 2)).float().cpu())
            if layer_idx == 0:
                amax.num_tokens += key.shape[0]
        return hook

    handles = [m.register_forward_pre_hook(hook_for(i)) for i, m in enumerate(modules)]
    try:
        yield amax
    finally:
        for handle in handles:
            handle.remove()


def calibrate(mini_llm: Any, calibration_messages: list[list[dict[str, str]]]) -> KVAmax:
    """Run the unquantized mini engine on calibration chats (greedy) and return the K/V amax.

    Args:
        mini_llm: a `labs.core.mini.llm.LLM` with a bf16 KV cache.
        calibration_messages: chats to calibrate on (prompt and answer K/V both count).
    """
    with recording_amax(mini_llm) as amax:
        mini_llm.chat(calibration_messages, SamplingParams(temperature=0.0, max_tokens=CALIBRATION_MAX_TOKENS),
                      use_tqdm=False)
    return amax
