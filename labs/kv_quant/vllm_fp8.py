"""The real engine with an fp8 KV cache: capacity, bytes per token, scales and phrasebook answers.

Why compare engines one at a time: two vLLM engines cannot live in one process (free_llm tears
down process-wide state), so each KV dtype gets its own engine, freed before the next starts. The
KV space is the same for all of them (VLLM_CPU_KVCACHE_SPACE on CPU, the same memory share on a
GPU), so the ratio of their block counts is the capacity an fp8 cache buys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from labs.hardware import UnsupportedHardwareError, check_kv_cache_dtype, detect_hardware

KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")  # "fp8" is e4m3 in vLLM
MAX_TOKENS = 48  # as labs.kv_quant.measure: phrasebook answers are < 20 tokens


def unsupported_reason(kv_cache_dtype: str) -> str | None:
    """Why this machine cannot run `kv_cache_dtype` in vLLM, or None when it can."""
    try:
        check_kv_cache_dtype(detect_hardware(), kv_cache_dtype)
    except UnsupportedHardwareError as exc:
        return str(exc)
    return None


@dataclass
class VllmKVRun:
    """One engine's KV cache as the engine reports it, and its phrasebook answers.

    Attributes:
        kv_cache_dtype: what was asked for.
        skipped: why it did not run (None when it ran).
        num_blocks, block_size: the engine's KV pool (null block excluded).
        bytes_per_token: from the engine's KV cache spec.
        kv_scales: (k_scale, v_scale) of the first attention layer.
        answers: greedy answer token ids per prompt.
    """

    kv_cache_dtype: str
    skipped: str | None = None
    num_blocks: int = 0
    block_size: int = 0
    bytes_per_token: int = 0
    kv_scales: tuple[float, float] | None = None
    answers: list[list[int]] = field(default_factory=list)

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size


def run_vllm_kv_dtype(kv_cache_dtype: str, messages: list[list[dict[str, str]]], model: str | None = None,
                      verbose: bool = False) -> VllmKVRun:
    """Start an engine with `kv_cache_dtype`, read its KV cache, answer `messages`, free it.

    Returns a skipped run, with the reason, where the hardware cannot run the dtype.
    """
    reason = unsupported_reason(kv_cache_dtype)
    if reason is not None:
        return VllmKVRun(kv_cache_dtype, skipped=reason)
    from vllm import SamplingParams

    from labs import vllm_internals as vi
    from labs.engine import free_llm, make_llm

    llm = make_llm(model, kv_cache_dtype=kv_cache_dtype, inspectable=True, verbose=verbose)
    try:
        snap = vi.kv_cache_snapshot(llm)
        scales = vi.attention_kv_scales(llm)
        outputs = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)
        return VllmKVRun(kv_cache_dtype, None, snap.num_blocks, snap.block_size, vi.kv_cache_bytes_per_token(llm),
                         next(iter(scales.values()), None), [list(o.outputs[0].token_ids) for o in outputs])
    finally:
        free_llm(llm)


def compare_kv_dtypes(runs: list[VllmKVRun]) -> pd.DataFrame:
    """One row per KV dtype: capacity and bytes vs the first run ("auto"), answers equal to its."""
    base = runs[0]
    rows: list[dict[str, Any]] = []
    for run in runs:
        if run.skipped:
            rows.append({"kv_cache_dtype": run.kv_cache_dtype, "status": "skipped: " + run.skipped})
            continue
        same = sum(a == b for a, b in zip(run.answers, base.answers))
        rows.append({"kv_cache_dtype": run.kv_cache_dtype, "status": "ran",
                     "KV blocks": run.num_blocks, "capacity (tokens)": run.capacity_tokens,
                     "capacity vs auto": round(run.capacity_tokens / base.capacity_tokens, 3),
                     "bytes/token": run.bytes_per_token,
                     "k_scale, v_scale": run.kv_scales,
                     "answers = auto's": f"{same}/{len(base.answers)}"})
    return pd.DataFrame(rows).set_index("kv_cache_dtype")
