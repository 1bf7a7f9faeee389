"""The labs on `tiny-llama`: another architecture (Llama), heads TP=2 cannot split, random weights.

What is checked here is what the labs' code does with such a model, on the real engine: Lab 3's
step counts (machine-independent) and its step-time explanation, Lab 5's calibrated fp8 scales
reaching vLLM's attention layers, the mini engine's Llama support against transformers, Lab 4's
refusal sentence against vLLM's own check, and the demo's prompts and filtered output. The
notebooks on tiny-llama are tests/test_notebooks.py's (see tests/any_model_notebooks.py).

Engines run in one fresh process per group (conftest's session engine runs tiny-phrasebook, and
two engines cannot share a process); token counts are small, so the file costs about a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from labs.lab3_continuous_batching.traces import TraceRequest, equal_lengths_trace, mixed_lengths_trace
from labs.lab3_continuous_batching.costs import expected_steps
from labs.core.models import resolve_model

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-llama"
BATCH_SIZE = 4
TRACES = {"equal lengths": equal_lengths_trace(2 * BATCH_SIZE, max_tokens=4, prompt_len=8),
          "mixed lengths": mixed_lengths_trace(BATCH_SIZE, 2, long=12, short=2, prompt_len=8)}


@pytest.fixture(scope="module")
def llama_dir() -> Path:
    return Path(resolve_model(MODEL).path)


def run_engine_side(out_path: str) -> None:
    """Engine side (a fresh process): Lab 3's comparison and step costs, then Lab 5's fp8 engines."""
    from labs.core import vllm_internals as vi
    from labs.lab3_continuous_batching.batching import compare_batching, summarize_batching
    from labs.lab3_continuous_batching.costs import explain_batching, explanation_lines, step_time_by_batch_size
    from labs.core.engine import free_llm, make_llm
    from labs.lab5_kv_quantization.calibrate import calibrate
    from labs.lab5_kv_quantization.measure import phrasebook_messages
    from labs.lab5_kv_quantization.vllm_fp8 import vllm_kv_runs
    from labs.lab5_kv_quantization.vllm_scales import fp8_layer_scales
    from labs.core.mini.llm import LLM

    llm = make_llm(MODEL, max_num_seqs=BATCH_SIZE, inspectable=True, verbose=False)
    record: dict[str, Any] = {"model_class": type(vi.model(llm)).__name__}
    results = compare_batching(llm, TRACES)
    step_costs = step_time_by_batch_size(llm, (1, BATCH_SIZE), rounds=2, decode_steps_per_round=2)
    explained = explain_batching(results, summarize_batching(results))
    free_llm(llm)
    record["comparison"] = results.to_dict(orient="records")
    record["step_costs"] = step_costs.reset_index().to_dict(orient="records")
    record["explanation"] = explanation_lines(explained, step_costs)

    messages = phrasebook_messages()[:2]
    amax = calibrate(LLM(MODEL, num_kv_blocks=16), messages)
    runs = vllm_kv_runs(resolve_model(MODEL).path, messages, amax, kv_cache_dtypes=("fp8",), verbose_first=False)
    record["expected_scales"] = [scales[0] for scales in fp8_layer_scales(amax)]
    record["fp8_runs"] = [run.__dict__ for run in runs]
    Path(out_path).write_text(json.dumps(record), encoding="utf-8")


@pytest.fixture(scope="module")
def engine_record(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("any-model") / "record.json"
    code = f"from {__name__} import run_engine_side; run_engine_side({str(out)!r})"
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.mark.engine
def test_vllm_runs_tiny_llama_as_llama(engine_record: dict[str, Any]) -> None:
    assert engine_record["model_class"] == "LlamaForCausalLM"


@pytest.mark.engine
@pytest.mark.parametrize("name", list(TRACES))
def test_step_counts_are_what_the_trace_predicts(engine_record: dict[str, Any], name: str) -> None:
    """The machine-independent figure of Lab 3: steps per mode follow from the trace and batch size alone."""
    rows = [r for r in engine_record["comparison"] if r["trace"] == name]
    trace: list[TraceRequest] = TRACES[name]
    for mode in ("static", "continuous"):
        steps = max(r["finish_step"] for r in rows if r["mode"] == mode)
        assert steps == expected_steps(trace, mode, BATCH_SIZE), (name, mode, steps)
    static, continuous = (expected_steps(trace, m, BATCH_SIZE) for m in ("static", "continuous"))
    assert (static > continuous) if name == "mixed lengths" else (static == continuous)


@pytest.mark.engine
def test_batching_explanation_gives_ratios_and_step_times_not_targets(engine_record: dict[str, Any]) -> None:
    costs = {row["batch_size"]: row["step_ms"] for row in engine_record["step_costs"]}
    assert set(costs) == {1, BATCH_SIZE} and all(ms > 0 for ms in costs.values())
    text = "\n".join(engine_record["explanation"])
    static, continuous = (expected_steps(TRACES["mixed lengths"], m, BATCH_SIZE) for m in ("static", "continuous"))
    assert f"{static / continuous:.2f}x the engine steps" in text and f"({static} vs {continuous}" in text
    assert f"a decode step of {BATCH_SIZE} requests takes" in text
    assert "target" not in text and "✗" not in text


@pytest.mark.engine
def test_calibrated_fp8_scales_reach_vllm_attention(engine_record: dict[str, Any]) -> None:
    """vLLM 0.32 keeps k_scale = v_scale = 1.0 without checkpoint scales; the calibrated copy's are loaded."""
    default, calibrated = engine_record["fp8_runs"]
    if default["skipped"]:
        pytest.skip(default["skipped"])
    assert default["kv_scales"] == [1.0, 1.0]
    assert calibrated["skipped"] is None and calibrated["label"] == "fp8 (calibrated scales)"
    k_expected, v_expected = engine_record["expected_scales"]
    assert calibrated["kv_scales"] == pytest.approx([k_expected, v_expected], rel=1e-6)
    assert k_expected != 1.0 and calibrated["bytes_per_token"] == default["bytes_per_token"]
    assert all(len(a) > 0 for a in calibrated["answers"])


def test_mini_engine_runs_llama_like_transformers(llama_dir: Path) -> None:
    """The mini engine's Llama (no q/k/v biases) gives transformers' logits for a whole prompt."""
    from transformers import AutoModelForCausalLM

    from labs.lab5_kv_quantization.measure import sequence_metadata
    from labs.core.mini.config import Config
    from labs.core.mini.runner import ModelRunner

    runner = ModelRunner(Config(model=str(llama_dir), dtype="float32", num_kv_blocks=4))
    token_ids = list(range(100, 140))
    hf = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = hf(torch.tensor([token_ids])).logits[0]  # (num_tokens, vocab_size)
        metadata = sequence_metadata([len(token_ids)], runner.block_size, torch.device("cpu"))
        hidden = runner.model(torch.tensor(token_ids), torch.arange(len(token_ids)), metadata)
        got = runner.model.compute_logits(hidden)
    assert (got - expected).abs().max() < 1e-3 * expected.abs().max()


def test_tp_refusal_agrees_with_vllm(llama_dir: Path) -> None:
    """Lab 4's one sentence for heads TP=2 cannot split, and vLLM's own config check refusing the same."""
    from vllm.engine.arg_utils import EngineArgs

    from labs.lab4_tensor_parallel.vllm_tp import tp_unsupported_reason

    reason = tp_unsupported_reason(llama_dir, 2)
    assert reason and "9 query heads and 3 KV heads" in reason
    assert tp_unsupported_reason(llama_dir, 3) is None and tp_unsupported_reason(llama_dir, 1) is None
    with pytest.raises(ValueError, match="divisible"):
        EngineArgs(model=str(llama_dir), tensor_parallel_size=2).create_engine_config()


@pytest.mark.engine
def test_demo_on_a_model_that_does_not_translate() -> None:
    """`make demo` on tiny-llama: English prompts and why, the live facts, no unactionable start-up notes."""
    from labs.core.quiet_output import is_unactionable

    env = {**os.environ, "VLLM_MODEL": MODEL}
    env.pop("DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "labs.demo"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "English prompts" in out and "What is the capital of France?  ->" in out
    assert "4. model runner  LlamaForCausalLM" in out and "Traceback" not in out
    assert "left out; DEBUG=1 shows everything" in out
    assert not [line for line in out.splitlines() if is_unactionable(line)]


def test_explanation_decomposes_the_throughput_ratio() -> None:
    """Throughput ratio = step ratio x (static ms per step / continuous ms per step), said in numbers, no target."""
    import pandas as pd

    from labs.lab3_continuous_batching.costs import explain_batching, explanation_lines

    def run(mode: str, finish_steps: list[int], outputs: list[int], seconds: float) -> list[dict]:
        return [{"trace": "mixed lengths", "mode": mode, "request_id": f"r{i}", "num_prompt_tokens": 16,
                 "num_output_tokens": n, "finish_step": f, "latency_s": seconds} for i, (f, n) in
                enumerate(zip(finish_steps, outputs))]

    # batch size 2: static runs [8, 2] then [8, 2] (16 steps); continuous admits the third request at step 3
    # and the fourth at step 9 (10 steps)
    results = pd.DataFrame(run("static", [8, 2, 16, 10], [8, 2, 8, 2], 1.6)
                           + run("continuous", [8, 2, 10, 10], [8, 2, 8, 2], 0.5))
    from labs.lab3_continuous_batching.batching import summarize_batching

    explained = explain_batching(results, summarize_batching(results))
    row = explained.loc["mixed lengths"]
    assert (row["static steps"], row["continuous steps"], row["step ratio"]) == (16, 10, 1.6)
    assert row["ms per step, static"] == 100 and row["ms per step, continuous"] == 50
    assert row["throughput ratio"] == pytest.approx(row["step ratio"] * 2)
    costs = pd.DataFrame({"step_ms": [1.0, 3.0], "prefill_tokens": [16, 32], "prefill_ms": [2.0, 4.0]},
                         index=pd.Index([1, 2], name="batch_size"))
    lines = explanation_lines(explained, costs)
    assert "3.00x the time of a step of 1" in lines[0] and "prefills 32 prompt tokens takes 4.0 ms" in lines[0]
    assert "1.60 x 2.00 = 3.20x the throughput" in lines[1] and "target" not in "".join(lines)
    assert len(lines) == 3 and "other programs were using the cores" in lines[2]  # 100 ms steps vs 4 ms alone
    calm = explanation_lines(explained, costs.assign(prefill_ms=[60.0, 80.0]))
    assert len(calm) == 2 and "other programs" not in "".join(calm)


def test_a_hub_id_not_on_disk_gets_sentences_not_tracebacks(tmp_path: Path) -> None:
    """A model vLLM would download has no config.json here: TP leaves the check to vLLM, the mini engine says why."""
    from labs.core.mini.config import mini_engine_unsupported_reason
    from labs.lab4_tensor_parallel.vllm_tp import tp_unsupported_reason

    hub_id = str(tmp_path / "Qwen" / "Qwen2.5-0.5B-Instruct")  # a path with nothing behind it, like a hub id
    assert tp_unsupported_reason(hub_id, 2) is None
    assert "local model folder" in (mini_engine_unsupported_reason(hub_id) or "")
