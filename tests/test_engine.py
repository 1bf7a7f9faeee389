"""make_llm / free_llm on the real engine, and the clear errors promised instead of tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from labs.core.engine import make_llm
from labs.core.engine_settings import CPU_BLOCK_SIZE
from labs.core.hardware import UnsupportedHardwareError, detect_hardware
from labs.core.models.phrasebook import load_phrasebook, translation_messages
from labs.core.models.resolve import ModelNotFoundError


@pytest.mark.engine
def test_make_llm_generates_and_records_why(llm: Any, model_path: Path, hf_model: Any) -> None:
    """Greedy tokens: repeatable, equal to transformers' on the prompt the tokenizer renders, as many as asked."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig
    from vllm import SamplingParams

    run = llm.workbook_run_info
    assert run.model.name == "tiny-phrasebook" and Path(run.model.path) == model_path
    hf_tokenizer = AutoTokenizer.from_pretrained(model_path)  # the tokenizer files, not vLLM's copy
    entry = load_phrasebook()[3]
    prompt = hf_tokenizer.apply_chat_template(translation_messages(entry.ja), add_generation_prompt=True,
                                              tokenize=False)
    (first,) = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=48), use_tqdm=False)
    (again,) = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=48), use_tqdm=False)
    assert list(first.prompt_token_ids) == hf_tokenizer.encode(prompt, add_special_tokens=False)
    tokens = list(first.outputs[0].token_ids)
    assert list(again.outputs[0].token_ids) == tokens, "greedy decoding differs between two identical calls"

    with torch.inference_mode():  # the second, independent path: transformers on the same weights
        expected = hf_model.generate(torch.tensor([first.prompt_token_ids]), max_new_tokens=48,
                                     do_sample=False)[0, len(first.prompt_token_ids):].tolist()
    assert tokens == expected, (hf_tokenizer.decode(tokens), hf_tokenizer.decode(expected))
    assert first.outputs[0].text == entry.zh  # a phrasebook entry tiny-phrasebook has learned

    # max_tokens is the count unless EOS came first: this answer stops on EOS, a cut one at max_tokens.
    eos_ids = set(GenerationConfig.from_pretrained(model_path).eos_token_id) | {hf_tokenizer.eos_token_id}
    assert first.outputs[0].finish_reason == "stop" and len(tokens) < 48 and tokens[-1] in eos_ids
    assert not eos_ids & set(tokens[:-1]), "generation went on past an EOS token"
    (cut,) = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=3), use_tqdm=False)
    assert cut.outputs[0].finish_reason == "length" and list(cut.outputs[0].token_ids) == tokens[:3]


@pytest.mark.engine
def test_engine_settings_match_the_detected_hardware(llm: Any) -> None:
    """The engine runs with what labs.core.hardware chose for this machine, and make_llm says so."""
    run = llm.workbook_run_info
    hw = detect_hardware()
    assert run.hardware == hw and f"Hardware: {hw.describe()}" in run.describe()
    config = llm.llm_engine.vllm_config
    assert config.parallel_config.tensor_parallel_size == 1
    if hw.device == "cuda":
        assert config.cache_config.gpu_memory_utilization == run.settings.engine_kwargs["gpu_memory_utilization"]
        return
    assert config.device_config.device_type == "cpu"
    assert config.cache_config.block_size == CPU_BLOCK_SIZE == run.settings.engine_kwargs["block_size"]
    assert config.model_config.enforce_eager is True
    space_gib = int(os.environ["VLLM_CPU_KVCACHE_SPACE"])  # what make_llm exported (or the user set)
    assert space_gib == int(run.settings.env.get("VLLM_CPU_KVCACHE_SPACE", space_gib))
    assert config.cache_config.kv_cache_memory_bytes == space_gib * 2**30, "the engine did not read it"
    assert any(f"block_size={CPU_BLOCK_SIZE}" in reason for reason in run.settings.reasons)


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
        assert gc.get_freeze_count() == 0, "make_llm froze the heap; the engine's shutdown must unfreeze it"
        llm2 = make_llm("tiny-phrasebook", verbose=False)
        second = llm2.generate(["hello"], SamplingParams(temperature=0, max_tokens=5), use_tqdm=False)
        assert first[0].outputs[0].token_ids == second[0].outputs[0].token_ids
        free_llm(llm2)
        print("SECOND-ENGINE-OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "SECOND-ENGINE-OK" in proc.stdout, proc.stderr[-3000:]


def test_an_in_process_engine_computes_with_one_thread_per_bound_core() -> None:
    """vLLM binds only the worker processes it starts; an engine kept in this process must still
    keep to its binding, or two of them spin against each other (tests/bench_in_process_threads.py)."""
    first_core = min(os.sched_getaffinity(0))
    script = textwrap.dedent("""
        import torch
        from vllm import SamplingParams
        from labs.core.engine import make_llm

        llm = make_llm("tiny-phrasebook")
        llm.generate(["hello"] * 4, SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)
        print("THREADS", torch.get_num_threads())
    """)
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": str(first_core), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "THREADS 1" in proc.stdout, proc.stdout[-2000:]
    assert f"1 OpenMP thread(s), one per core of VLLM_CPU_OMP_THREADS_BIND={first_core}" in proc.stdout


@pytest.mark.all_cores
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


@pytest.mark.engine
def test_freeing_one_engine_leaves_another_running(llm: Any) -> None:
    """A notebook or a test session holds several in-process engines; freeing one must not tear down
    vLLM's process-wide distributed state under the others ("pipeline model parallel group is not
    initialized" on their next step)."""
    from vllm import SamplingParams

    from labs.core.engine import free_llm, make_llm

    other = make_llm("tiny-phrasebook", inspectable=True, verbose=False)
    free_llm(other)
    (out,) = llm.generate(["おはようございます。"], SamplingParams(temperature=0.0, max_tokens=2), use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 2
