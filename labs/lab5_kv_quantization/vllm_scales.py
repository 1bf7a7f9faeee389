"""Calibrated `k_scale` / `v_scale` for vLLM's fp8 KV cache, given to vLLM the one way 0.32 takes them.

What vLLM 0.32 offers (read in its source, and checked on the CPU backend by
tests/test_any_model.py): no runtime calibration (there is no `calculate_kv_scales` in 0.32), and
for a checkpoint without a quantization config every attention layer's scales are reset to 1.0
after loading (`Attention.process_weights_after_loading` -> `set_default_quant_scales`). Scales
come only from a checkpoint whose config declares KV-cache quantization (`BaseKVCacheMethod`
loads `k_scale`/`v_scale` tensors). The CPU backend then uses them: `cpu_attn.py` passes
`layer._k_scale_float` / `_v_scale_float` to the kernels that write and read the fp8 cache.

So calibrated scales are a checkpoint. `write_calibrated_checkpoint` makes one beside the model
(weights linked, not copied): its config.json declares compressed-tensors' `kv_cache_scheme`
(8-bit float, one static scale per tensor) and `kv_scales.safetensors` holds
`model.layers.N.self_attn.k_scale` / `v_scale`, the layout llm-compressor writes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from labs.core.paths import RUNS_DIR
from labs.lab5_kv_quantization.calibrate import KVAmax
from labs.lab5_kv_quantization.quantize import qmax

KV_SCALES_DIR = RUNS_DIR / "kv_scales"
SCALES_FILE = "kv_scales.safetensors"
# compressed-tensors' KV-cache scheme: fp8 (e4m3), one static scale per layer for K and one for V.
KV_CACHE_SCHEME = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}


def fp8_layer_scales(amax: KVAmax) -> tuple[list[float], list[float]]:
    """Per-layer (k_scales, v_scales) for e4m3: the layer's amax over all KV heads / 448.

    Why per layer: vLLM's fp8 KV cache keeps one scale per layer for K and one for V, so a
    per-head calibration is reduced to its largest head (nothing clips).

    Args:
        amax: K/V amax per layer and KV head (`labs.lab5_kv_quantization.calibrate`).

    Returns:
        (k_scales, v_scales), one float per layer.
    """
    top = qmax(torch.float8_e4m3fn)
    return ([float(a) / top for a in amax.key.amax(dim=1)], [float(a) / top for a in amax.value.amax(dim=1)])


def write_calibrated_checkpoint(model_dir: str | Path, amax: KVAmax, out_root: Path = KV_SCALES_DIR) -> Path:
    """A copy of `model_dir` that carries calibrated fp8 KV scales (weights linked, not copied).

    Args:
        model_dir: an unquantized Hugging Face model folder (bf16 or fp32 weights).
        amax: K/V amax per layer and KV head from `labs.lab5_kv_quantization.calibrate`.
        out_root: where copies go (git-ignored `runs/kv_scales/` by default); the folder name
            holds a hash of the scales, so a new calibration never reuses an old copy.

    Returns:
        The new model folder; start vLLM on it with kv_cache_dtype="fp8" (e4m3: vLLM refuses
        e5m2 with checkpoint scales).

    Raises:
        ValueError: the model already declares a quantization config (its own scales, if any, apply).
    """
    src = Path(model_dir).resolve()
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in config:
        raise ValueError(f"{src} already declares quantization ({config['quantization_config'].get('quant_method')}); "
                         "its checkpoint decides the KV scales")
    k_scales, v_scales = fp8_layer_scales(amax)
    digest = hashlib.sha256(json.dumps([str(src), k_scales, v_scales]).encode()).hexdigest()[:10]
    out = out_root / f"{src.name}-fp8-kv-{digest}"
    if (out / SCALES_FILE).is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():  # everything else is the original model: link it
        if item.name not in ("config.json", "model.safetensors.index.json") and not (out / item.name).exists():
            os.symlink(item, out / item.name)
    names = {f"model.layers.{i}.self_attn.{kind}_scale": torch.tensor(scale, dtype=torch.float32)
             for kind, scales in (("k", k_scales), ("v", v_scales)) for i, scale in enumerate(scales)}
    index = src / "model.safetensors.index.json"
    if index.is_file():  # a sharded checkpoint: vLLM loads only the files its index names
        index_data = json.loads(index.read_text(encoding="utf-8"))
        index_data["weight_map"].update({name: SCALES_FILE for name in names})
        (out / index.name).write_text(json.dumps(index_data, indent=2), encoding="utf-8")
    config["quantization_config"] = {"quant_method": "compressed-tensors", "format": "dense", "config_groups": {},
                                     "ignore": [], "kv_cache_scheme": KV_CACHE_SCHEME}
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    save_file(names, str(out / SCALES_FILE))  # last: its presence marks a finished copy
    return out
