"""Lab 5's prediction checks: fp8 KV bytes per token and capacity read from real vLLM engines are right,
and a wrong guess is called wrong.

The bf16 ("auto") engine is the session's (`llm` in tests/conftest.py: tiny-phrasebook, inspectable,
the same KV space as every engine here); the fp8 engine runs in a fresh process, since two engines
cannot live in one. The expectations are independent: bytes from the config.json arithmetic (K and V,
1 byte each), capacity from the bf16 engine's bytes per token.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from labs.core.predict import NO_PREDICTION
from labs.lab5_kv_quantization import predictions, vllm_fp8
from labs.lab5_kv_quantization.vllm_fp8 import VllmKVRun

pytestmark = pytest.mark.engine


def config_bytes_per_token(model_path: Path, bytes_per_value: int) -> int:
    config = json.loads((model_path / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * bytes_per_value


@pytest.fixture(scope="module")
def runs(llm: Any) -> list[VllmKVRun]:
    """[auto: the session's engine, fp8: a fresh engine in a subprocess (or skipped, with the reason)]."""
    from labs.core import vllm_internals as vi

    snap = vi.kv_cache_snapshot(llm)
    auto = VllmKVRun("auto", None, snap.num_blocks, snap.block_size, vi.kv_cache_bytes_per_token(llm))
    if vllm_fp8.unsupported_reason("fp8"):
        return [auto, VllmKVRun("fp8", skipped=vllm_fp8.unsupported_reason("fp8"))]
    script = textwrap.dedent("""
        import json, os
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from labs.lab5_kv_quantization.measure import phrasebook_messages
        from labs.lab5_kv_quantization.vllm_fp8 import run_vllm_kv_dtype
        print("RESULT", json.dumps(run_vllm_kv_dtype("fp8", phrasebook_messages()[:1], "tiny-phrasebook").__dict__))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    return [auto, VllmKVRun(**json.loads(line[len("RESULT "):]))]


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
