"""make_llm / free_llm on the real engine, and the clear errors promised instead of tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from labs.core.engine import make_llm
from labs.core.hardware import UnsupportedHardwareError, detect_hardware
from labs.core.models.resolve import ModelNotFoundError


@pytest.mark.engine
def test_make_llm_generates_and_records_why(llm: Any) -> None:
    from vllm import SamplingParams

    run = llm.workbook_run_info
    assert run.model.name == "tiny-phrasebook" and "Model:" in run.describe()
    (out,) = llm.generate(["<|im_start|>user\nテスト<|im_end|>\n"], SamplingParams(max_tokens=8), use_tqdm=False)
    assert out.outputs[0].token_ids


def test_missing_model_is_a_clear_error() -> None:
    with pytest.raises(ModelNotFoundError, match="Looked in"):
        make_llm("/no/such/model-folder", verbose=False)


def test_fp8_kv_cache_on_cpu_without_avx512_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    """make_llm refuses before vLLM crashes. This machine's real CPU, minus AVX-512/AMX if it has them."""
    import dataclasses

    import labs.core.engine

    hw = detect_hardware()
    if hw.device == "cuda":
        pytest.skip("GPUs run an FP8 KV cache")
    without = dataclasses.replace(hw, cpu_flags=hw.cpu_flags - {"avx512f", "amx_bf16", "amx_tile", "amx_int8"})
    monkeypatch.setattr(labs.core.engine, "detect_hardware", lambda: without)
    with pytest.raises(UnsupportedHardwareError, match="AVX-512 or AMX"):
        make_llm("tiny-phrasebook", kv_cache_dtype="fp8", verbose=False)


@pytest.mark.engine
def test_free_llm_releases_the_engine_so_a_second_one_starts() -> None:
    """In a fresh process (as in a notebook kernel): engine 1's KV cache is really gone, engine 2 runs."""
    script = textwrap.dedent("""
        import gc, weakref
        from vllm import SamplingParams
        from labs.core import vllm_internals as vi
        from labs.core.engine import free_llm, make_llm

        llm = make_llm("tiny-phrasebook", verbose=False)
        kv_ref = weakref.ref(vi.kv_cache_tensors(llm)[0])
        model_ref = weakref.ref(vi.model(llm))
        first = llm.generate(["hello"], SamplingParams(temperature=0, max_tokens=5), use_tqdm=False)
        free_llm(llm)
        del llm
        gc.collect()
        assert kv_ref() is None, "KV cache tensor still alive after free_llm"
        assert model_ref() is None, "model still alive after free_llm"
        llm2 = make_llm("tiny-phrasebook", verbose=False)
        second = llm2.generate(["hello"], SamplingParams(temperature=0, max_tokens=5), use_tqdm=False)
        assert first[0].outputs[0].token_ids == second[0].outputs[0].token_ids
        free_llm(llm2)
        print("SECOND-ENGINE-OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "SECOND-ENGINE-OK" in proc.stdout, proc.stderr[-3000:]


def test_a_tp2_thread_binding_does_not_leak_into_the_next_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """make_llm exports the settings' variables; the next make_llm must start from the user's own."""
    from labs.core.engine import export_engine_env, plan_run, unexport_engine_env
    from labs.core.hardware import detect_hardware

    hw = detect_hardware()
    if hw.device != "cpu" or hw.num_cpu_cores < 2:
        pytest.skip("the CPU thread binding needs a CPU with 2 cores")
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")  # the user's own choice
    export_engine_env(plan_run(tensor_parallel_size=2).settings.env)
    assert "|" in os.environ["VLLM_CPU_OMP_THREADS_BIND"]
    unexport_engine_env()
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ, "the TP=2 binding was removed"
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3", "what the user exported is kept"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in plan_run(tensor_parallel_size=1).settings.env
