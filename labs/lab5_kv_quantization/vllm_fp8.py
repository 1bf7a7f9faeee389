"""The real engine with an fp8 KV cache: capacity, bytes per token, scales and greedy answers.

Why compare engines one at a time: two vLLM engines cannot live in one process (free_llm tears
down process-wide state), so each KV dtype gets its own engine, freed before the next starts. The
KV space is the same for all of them (VLLM_CPU_KVCACHE_SPACE on CPU, the same memory share on a
GPU), so the ratio of their block counts is the capacity an fp8 cache buys.

Which scales: vLLM 0.32 uses k_scale = v_scale = 1.0 unless the checkpoint carries scales
(labs/lab5_kv_quantization/vllm_scales.py explains why and writes such a checkpoint from a calibration), so
`vllm_kv_runs` runs fp8 both ways: with vLLM's default 1.0 and with calibrated scales.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from labs.core.engine_settings import check_kv_cache_dtype
from labs.core.hardware import UnsupportedHardwareError, detect_hardware
from labs.lab5_kv_quantization.calibrate import KVAmax

KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")  # "fp8" is e4m3 in vLLM
MAX_TOKENS = 32  # as labs.lab5_kv_quantization.measure: phrasebook answers take <= 20 tokens with EOS


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
        label: the row's name ("fp8, calibrated scales"); defaults to kv_cache_dtype.
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
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.kv_cache_dtype

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size


def run_vllm_kv_dtype(kv_cache_dtype: str, messages: list[list[dict[str, str]]], model: str | None = None,
                      verbose: bool = False, label: str = "") -> VllmKVRun:
    """Start an engine with `kv_cache_dtype`, read its KV cache, answer `messages`, free it.

    Args:
        kv_cache_dtype: "auto", "fp8", "fp8_e4m3" or "fp8_e5m2".
        messages: chats answered greedily.
        model: a path, hub id or name (default: the learner's selection).
        verbose: print the model and hardware first.
        label: the row's name in `compare_kv_dtypes`.

    Returns:
        The run, or a skipped run with the reason where the hardware cannot run the dtype.
    """
    reason = unsupported_reason(kv_cache_dtype)
    if reason is not None:
        return VllmKVRun(kv_cache_dtype, skipped=reason, label=label)
    from vllm import SamplingParams

    from labs.core import vllm_internals as vi
    from labs.core.engine import free_llm, make_llm

    llm = make_llm(model, kv_cache_dtype=kv_cache_dtype, inspectable=True, verbose=verbose)
    try:
        snap = vi.kv_cache_snapshot(llm)
        scales = vi.attention_kv_scales(llm)
        outputs = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)
        return VllmKVRun(kv_cache_dtype, None, snap.num_blocks, snap.block_size, vi.kv_cache_bytes_per_token(llm),
                         next(iter(scales.values()), None), [list(o.outputs[0].token_ids) for o in outputs], label)
    finally:
        free_llm(llm)


def vllm_kv_runs(model: str, messages: list[list[dict[str, str]]], amax: KVAmax | None,
                 kv_cache_dtypes: tuple[str, ...] = KV_CACHE_DTYPES, verbose_first: bool = True) -> list[VllmKVRun]:
    """One engine per KV dtype on `model` (vLLM's default scales), plus fp8 with calibrated scales.

    Args:
        model: the model folder to run.
        messages: chats answered greedily by every engine.
        amax: a calibration of `model` (labs.lab5_kv_quantization.calibrate); None skips the calibrated run.
        kv_cache_dtypes: the dtypes to run with vLLM's own scales; the first is the reference.
        verbose_first: print the model and hardware for the first engine.

    Returns:
        The runs in order, the calibrated one last (skipped, with the reason, where it cannot run).
    """
    from labs.lab5_kv_quantization.vllm_scales import write_calibrated_checkpoint

    runs = [run_vllm_kv_dtype(d, messages, model, verbose=verbose_first and i == 0,
                              label=f"{d} (scales 1.0)" if d != "auto" else d) for i, d in enumerate(kv_cache_dtypes)]
    label = "fp8 (calibrated scales)"
    if amax is None:
        runs.append(VllmKVRun("fp8", skipped="no calibration of this model (the mini engine cannot run it)", label=label))
        return runs
    try:
        calibrated = write_calibrated_checkpoint(model, amax)
    except ValueError as exc:
        runs.append(VllmKVRun("fp8", skipped=str(exc), label=label))
        return runs
    runs.append(run_vllm_kv_dtype("fp8", messages, str(calibrated), label=label))
    return runs


def _rounded(scales: tuple[float, float] | None) -> tuple[float, ...] | None:
    return tuple(float(f"{x:.4g}") for x in scales) if scales else None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def compare_kv_dtypes(runs: list[VllmKVRun]) -> pd.DataFrame:
    """One row per run: capacity and bytes vs the first run ("auto"), answers equal to its.

    "tokens before the first difference" counts, over all answers, the tokens each answer shares
    with the reference answer before they part: finer than whole answers, since one changed token
    changes everything after it.
    """
    base = runs[0]
    rows: list[dict[str, Any]] = []
    for run in runs:
        if run.skipped:
            rows.append({"kv_cache_dtype": run.label, "status": "skipped: " + run.skipped})
            continue
        same = sum(a == b for a, b in zip(run.answers, base.answers))
        shared = sum(_common_prefix(a, b) for a, b in zip(run.answers, base.answers))
        rows.append({"kv_cache_dtype": run.label, "status": "ran",
                     "KV blocks": run.num_blocks, "capacity (tokens)": run.capacity_tokens,
                     "capacity vs auto": round(run.capacity_tokens / base.capacity_tokens, 3),
                     "bytes/token": run.bytes_per_token,
                     "k_scale, v_scale (layer 0)": _rounded(run.kv_scales),
                     "answers = auto's": f"{same}/{len(base.answers)}",
                     "tokens before the first difference": f"{shared}/{sum(len(a) for a in base.answers)}"})
    return pd.DataFrame(rows).set_index("kv_cache_dtype")
