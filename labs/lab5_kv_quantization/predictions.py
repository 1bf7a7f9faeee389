"""Lab 5's predictions, checked against the real vLLM engines of section 5 (`vllm_fp8.vllm_kv_runs`).

Why from the engines: the bytes per token are what vLLM's KV cache spec allocates
(`vllm_internals.kv_cache_bytes_per_token` on the live engine), and the capacity is the number of
blocks each engine really got from the same KV memory. Where this machine cannot run an fp8 cache
(a CPU without AVX-512 or AMX), the fp8 figure comes from vLLM's own sizing for the model's
config (`vllm_internals.kv_cache_spec_bytes_per_token`: a `FullAttentionSpec` with vLLM's fp8
storage dtype), and the capacity from the bf16 engine's live figure divided by it; the verdict
says which.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from labs.core.predict import Verdict, check_number
from labs.lab5_kv_quantization.vllm_fp8 import VllmKVRun

FP8 = "fp8"  # vLLM's name for e4m3, the run whose bytes are asked for


@dataclass(frozen=True)
class AttentionShape:
    """What a token's KV takes in a model's config: layers x KV heads x head size, K and V each."""

    num_layers: int
    num_kv_heads: int
    head_dim: int

    def describe(self) -> str:
        return f"{self.num_layers} layers x {self.num_kv_heads} KV heads x head size {self.head_dim}"


def attention_shape(model_dir: str | Path) -> AttentionShape:
    """The attention shape in a model folder's config.json (any decoder: Qwen2, Llama, ...).

    Raises:
        FileNotFoundError: no config.json (a hub id vLLM downloads: its engine's figure is used then).
    """
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    config = config.get("text_config", config)  # multimodal configs nest the language model's
    heads = config["num_attention_heads"]
    return AttentionShape(config["num_hidden_layers"], config.get("num_key_value_heads", heads),
                          config.get("head_dim") or config["hidden_size"] // heads)


def describe_attention(model_dir: str | Path) -> str:
    """One line for the prediction cell: the model's attention shape, or why it is not known here."""
    try:
        return f"{model_dir}: {attention_shape(model_dir).describe()}"
    except (FileNotFoundError, KeyError) as exc:
        return f"{model_dir}: no attention shape in a local config.json ({exc!r}); vLLM's engine will tell"


def _run(runs: list[VllmKVRun], kv_cache_dtype: str) -> VllmKVRun | None:
    """The first run with vLLM's own scales for `kv_cache_dtype` (the calibrated one is last)."""
    return next((r for r in runs if r.kv_cache_dtype == kv_cache_dtype), None)


@dataclass(frozen=True)
class LiveFigure:
    """A value and where it came from (shown in the verdict)."""

    value: float
    source: str


def fp8_bytes_per_token(runs: list[VllmKVRun], model_dir: str | Path) -> LiveFigure:
    """KV bytes one token takes with `kv_cache_dtype="fp8"`: the live engine's, else vLLM's sizing of the config."""
    fp8 = _run(runs, FP8)
    if fp8 is not None and not fp8.skipped:
        return LiveFigure(fp8.bytes_per_token, "the live fp8 engine's KV cache spec (vllm_internals.kv_cache_bytes_per_token)")
    from labs.core import vllm_internals as vi

    shape = attention_shape(model_dir)
    return LiveFigure(vi.kv_cache_spec_bytes_per_token(shape.num_layers, shape.num_kv_heads, shape.head_dim, FP8),
                      "vLLM's own FullAttentionSpec for this config (no fp8 engine can run here)")


def fp8_capacity_ratio(runs: list[VllmKVRun], model_dir: str | Path) -> LiveFigure:
    """Tokens the fp8 cache holds / tokens the bf16 ("auto") cache holds, in the same KV memory."""
    auto, fp8 = _run(runs, "auto"), _run(runs, FP8)
    if auto is None or auto.skipped:
        raise ValueError("the comparison needs the 'auto' (bf16) run first")
    if fp8 is not None and not fp8.skipped:
        return LiveFigure(fp8.capacity_tokens / auto.capacity_tokens,
                          f"the engines' own KV pools: {fp8.capacity_tokens:,} tokens with fp8 vs "
                          f"{auto.capacity_tokens:,} with {auto.kv_cache_dtype} in the same KV memory")
    fp8_bytes = fp8_bytes_per_token(runs, model_dir)
    return LiveFigure(auto.bytes_per_token / fp8_bytes.value,
                      f"the bf16 engine's {auto.bytes_per_token} bytes/token over {fp8_bytes.value:g} from {fp8_bytes.source}")


def check_fp8_bytes_per_token(predicted: float | None, runs: list[VllmKVRun], model_dir: str | Path,
                              quiet: bool = False) -> Verdict:
    """The learner's fp8 KV bytes per token for `model_dir`, against vLLM's."""
    figure = fp8_bytes_per_token(runs, model_dir)
    try:
        shape = f"2 (K and V) x {attention_shape(model_dir).describe()} x 1 byte"
    except (FileNotFoundError, KeyError):
        shape = "2 (K and V) x layers x KV heads x head size x 1 byte"
    why = (f"From {figure.source}: {shape}. vLLM stores fp8 as uint8 codes with one static scale per layer, kept "
           "on the layer, not in the cache, so nothing else is stored per token.")
    return check_number("fp8 KV bytes per token", predicted, figure.value, why, unit=" bytes", quiet=quiet)


def check_fp8_capacity_ratio(predicted: float | None, runs: list[VllmKVRun], model_dir: str | Path,
                             tolerance: float = 0.05, quiet: bool = False) -> Verdict:
    """The learner's 'fp8 holds N times as many tokens', against the engines' block counts (right within `tolerance`)."""
    figure = fp8_capacity_ratio(runs, model_dir)
    why = (f"From {figure.source}. Half the bytes per token, so twice the tokens; the pool is a whole number of "
           "blocks, so the ratio can miss 2 by a block.")
    return check_number("tokens the same KV memory holds with fp8, times bf16's", predicted, round(figure.value, 3),
                        why, tolerance=tolerance, unit="x", quiet=quiet)
