"""Lab 5's prediction checks: fp8 KV bytes per token and capacity read from real vLLM engines are right,
and a wrong guess is called wrong.

The bf16 ("auto") and fp8 engines are the ones tests/test_lab5_kv_quantization.py checks too, made
once (tests/kv_quantization_support.py: a fresh process, the same KV space for both). The
expectations are independent: bytes from the config.json arithmetic (K and V,
1 byte each), capacity from the bf16 engine's bytes per token.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from labs.core.predict import NO_PREDICTION
from labs.lab5_kv_quantization import predictions
from labs.lab5_kv_quantization.vllm_fp8 import VllmKVRun
from tests.kv_quantization_support import kv_dtype_runs

pytestmark = pytest.mark.engine


def config_bytes_per_token(model_path: Path, bytes_per_value: int) -> int:
    config = json.loads((model_path / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * bytes_per_value


@pytest.fixture(scope="module")
def runs() -> list[VllmKVRun]:
    """[auto, fp8] from real engines (tests/kv_quantization_support.py; fp8 skipped, with the reason, where
    the hardware cannot run it)."""
    return kv_dtype_runs()[:2]


def test_fp8_bytes_per_token_come_from_the_engine(runs: list[VllmKVRun], model_path: Path) -> None:
    expected = config_bytes_per_token(model_path, 1)
    assert runs[0].bytes_per_token == config_bytes_per_token(model_path, 2)  # bf16: 2 bytes a value
    figure = predictions.fp8_bytes_per_token(runs, model_path)
    assert figure.value == expected
    if not runs[1].skipped:
        assert "live fp8 engine" in figure.source
    assert predictions.check_fp8_bytes_per_token(expected, runs, model_path, quiet=True).right is True
    wrong = predictions.check_fp8_bytes_per_token(expected // 2, runs, model_path, quiet=True)  # forgot V
    assert wrong.right is False and "wrong by" in wrong.message and "(-50%)" in wrong.message
    none = predictions.check_fp8_bytes_per_token(None, runs, model_path, quiet=True)
    assert none.right is None and NO_PREDICTION in none.message and f"{expected:,}" in none.message


def test_fp8_holds_twice_the_tokens_in_the_same_memory(runs: list[VllmKVRun], model_path: Path) -> None:
    ratio = predictions.fp8_capacity_ratio(runs, model_path).value
    assert 1.95 <= ratio <= 2.05, ratio
    assert predictions.check_fp8_capacity_ratio(2, runs, model_path, quiet=True).right is True
    wrong = predictions.check_fp8_capacity_ratio(1.5, runs, model_path, quiet=True)
    assert wrong.right is False and "wrong by" in wrong.message
    assert predictions.check_fp8_capacity_ratio(None, runs, model_path, quiet=True).right is None


def test_without_an_fp8_engine_vllms_sizing_of_the_config_answers(runs: list[VllmKVRun], model_path: Path) -> None:
    skipped = [runs[0], VllmKVRun("fp8", skipped="no AVX-512 or AMX here")]
    figure = predictions.fp8_bytes_per_token(skipped, model_path)
    assert figure.value == config_bytes_per_token(model_path, 1) and "FullAttentionSpec" in figure.source
    assert predictions.fp8_capacity_ratio(skipped, model_path).value == 2
    assert "FullAttentionSpec" in predictions.check_fp8_capacity_ratio(None, skipped, model_path, quiet=True).message
    assert dataclasses.asdict(predictions.attention_shape(model_path))["num_layers"] > 0
