"""Grades Lab 9's exercises against vLLM's own code.

- lora_forward: random batches whose tokens use different adapter slots (and no adapter), against
  vLLM 0.32.0's CPU punica wrapper (`PunicaWrapperCPU.add_lora_linear` over the torch ops in
  vllm/lora/ops/torch_ops/lora_ops.py, via `vi_lora.punica_lora_linear`), decode and prefill paths,
  with the scaling folded into B as vLLM's `LoRALayerWeights.optimize` does. vLLM's CPU ops read a
  no-adapter token's A/B at index -1 (the last slot), so the grader gives vLLM one extra, empty
  slot, as Lab 9's engine keeps one (`MAX_LORAS`), and your function the slots without it.
- lora_rank_and_scaling: adapter configs (plain, rsLoRA, rank_pattern / alpha_pattern with
  suffix and regex keys) against `PEFTHelper.get_rank_and_scaling` (vllm/lora/peft_helper.py).
- lora_slot_bytes: against the A/B tensors a live engine with `enable_lora=True` allocated for its
  slots (`vi_lora.bytes_per_slot`), and, for other shapes (9 heads, a head_dim override, fewer
  targets, fp32), against the allocation rule that engine confirmed.
Each check also fails tests/exercises/broken_lab9.py (the "grader catches" tests).

Runs the reference by default; `make grade LAB=9` (LABS_GRADE=learner) runs yours.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from labs.core.grading import load_implementation
from tests.exercises.mirror import assert_learner_mirrors_reference
from labs.core.vllm_internals import lora as vi_lora

BROKEN = "tests.exercises.broken_lab9"


@pytest.fixture(scope="module")
def impl() -> Any:
    return load_implementation("lab9_lora")


def engine_side(out_path: str) -> None:
    """In a fresh process: Lab 9's engine, and what its LoRA layers allocated (no adapter needs loading)."""
    import json

    from labs.core.engine import free_llm
    from labs.lab9_multi_lora.multi_lora import make_lora_llm

    llm = make_lora_llm(verbose=False)
    hf = llm.llm_engine.model_config.hf_config
    record = {"config": {k: getattr(hf, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                     "num_attention_heads", "num_key_value_heads")},
              "head_dim": getattr(hf, "head_dim", None),
              "max_lora_rank": llm.llm_engine.vllm_config.lora_config.max_lora_rank,
              "dtype_bytes": torch.empty((), dtype=llm.llm_engine.model_config.dtype).element_size(),
              "bytes_per_slot": vi_lora.bytes_per_slot(llm)}
    free_llm(llm)
    Path(out_path).write_text(json.dumps(record), encoding="utf-8")


@pytest.fixture(scope="module")
def engine_record(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The live engine's slot allocation, read in a subprocess.

    Why a subprocess: `make grade` / `make progress` run every lab's graders in one process, and
    after vLLM's n-gram drafter has imported numba there (Lab 7), a new in-process vLLM 0.32.0
    engine fails to start on CPU (its kernel-override scan trips over an llvmlite object).
    """
    import json
    import os
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("lab9-engine") / "record.json"
    code = f"from tests.exercises.test_lab9_multi_lora import engine_side; engine_side({str(out)!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


# --- 1. a mixed-adapter LoRA layer vs vLLM's punica wrapper --------------------------------------


def check_lora_forward(impl: Any) -> None:
    for seed, (num_tokens, d_in, d_out, rank, num_slots, dtype) in enumerate(
            [(7, 16, 12, 4, 2, torch.float32), (12, 32, 24, 8, 3, torch.float32), (9, 64, 48, 16, 2, torch.bfloat16)]):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(num_tokens, d_in, generator=gen).to(dtype)
        weight = torch.randn(d_out, d_in, generator=gen).to(dtype) / math.sqrt(d_in)
        lora_a = torch.randn(num_slots, rank, d_in, generator=gen).to(dtype)
        lora_b = torch.randn(num_slots, d_out, rank, generator=gen).to(dtype)
        scalings = [0.5 + i for i in range(num_slots)]
        # tokens grouped by request, as vLLM lays a batch out; -1: a request without an adapter
        token_slots = torch.randint(-1, num_slots, (num_tokens,), generator=gen).tolist()
        token_slots[0], token_slots[-1] = -1, num_slots - 1
        # vLLM's view: adapter ids 101.. in slots, scaling folded into B, one empty slot at the end
        slot_ids: list[int | None] = [101 + i for i in range(num_slots)] + [None]
        folded_b = torch.cat([lora_b * torch.tensor(scalings, dtype=dtype).view(-1, 1, 1),
                              torch.zeros(1, d_out, rank, dtype=dtype)])
        padded_a = torch.cat([lora_a, torch.zeros(1, rank, d_in, dtype=dtype)])
        token_ids = [0 if s < 0 else 101 + s for s in token_slots]
        for is_prefill in (False, True):
            want = vi_lora.punica_lora_linear(x, weight, padded_a, folded_b, token_ids, slot_ids, is_prefill)
            got = impl.lora_forward(x.clone(), weight, lora_a, lora_b, scalings, list(token_slots))
            assert tuple(got.shape) == tuple(want.shape), f"shape {tuple(got.shape)}, vLLM {tuple(want.shape)}"
            tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
            bad = [t for t in range(num_tokens)
                   if not torch.allclose(got[t].float(), want[t].float(), rtol=tol, atol=tol * 10)]
            assert not bad, (f"rows {bad} (slots {[token_slots[t] for t in bad]}) differ from vLLM's punica wrapper "
                             f"({'prefill' if is_prefill else 'decode'} path, {dtype}); -1 means no adapter")


def test_lora_forward_matches_vllms_punica_wrapper(impl: Any) -> None:
    check_lora_forward(impl)


def test_grader_catches_a_wrong_lora_forward() -> None:
    with pytest.raises(AssertionError, match="differ from vLLM's punica wrapper"):
        check_lora_forward(load_implementation("lab9_lora", BROKEN))


# --- 2. rank and scaling vs vLLM's PEFTHelper -----------------------------------------------------

CONFIGS = [
    {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj"]},
    {"r": 8, "lora_alpha": 8, "use_rslora": True, "target_modules": ["q_proj"]},
    {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
     "rank_pattern": {"v_proj": 4, "layers.1.self_attn.q_proj": 32}, "alpha_pattern": {"q_proj": 64}},
    {"r": 4, "lora_alpha": 4, "use_rslora": True, "target_modules": ["down_proj"],
     "rank_pattern": {r"layers\.[02]\.mlp\.down_proj": 16}, "alpha_pattern": {"mlp.down_proj": 2}},
]
MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
           "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj",
           "model.layers.0.self_attn.xq_proj"]


def check_rank_and_scaling(impl: Any) -> None:
    for config in CONFIGS:
        for module in MODULES:
            want = vi_lora.peft_rank_and_scaling(config, module)
            got = impl.lora_rank_and_scaling(dict(config), module)
            assert got[0] == want[0] and got[1] == pytest.approx(want[1], rel=1e-12), (
                f"{module} with {config}: you say (rank, scaling) = {got}, vLLM's PEFTHelper {want}")


def test_rank_and_scaling_match_vllms_peft_helper(impl: Any) -> None:
    check_rank_and_scaling(impl)


def test_grader_catches_a_wrong_scaling() -> None:
    with pytest.raises(AssertionError, match="vLLM's PEFTHelper"):
        check_rank_and_scaling(load_implementation("lab9_lora", BROKEN))


# --- 3. memory per adapter slot vs vLLM's allocation ------------------------------------------------

ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def vllm_layer_bytes(config: Any, max_lora_rank: int, targets: list[str], dtype_bytes: int) -> int:
    """Per slot, what vLLM's LoRA layers allocate for `targets`: A (max_rank x input_size) and B
    (output slice x max_rank) per slice (`BaseLinearLayerWithLoRA.create_lora_weights`); q/k/v share
    one packed layer with three slices. `test_slot_bytes_match_the_live_engine` holds this rule to a
    running engine's tensors, so the other shapes below are graded by a rule vLLM itself confirmed."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    layers = {"q_proj": (config.hidden_size, q), "k_proj": (config.hidden_size, kv), "v_proj": (config.hidden_size, kv),
              "o_proj": (q, config.hidden_size), "gate_proj": (config.hidden_size, config.intermediate_size),
              "up_proj": (config.hidden_size, config.intermediate_size),
              "down_proj": (config.intermediate_size, config.hidden_size)}
    return config.num_hidden_layers * dtype_bytes * sum(
        max_lora_rank * (i + o) for name, (i, o) in layers.items() if name in targets)


def check_slot_bytes_by_config(impl: Any) -> None:
    llama = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=2, num_attention_heads=9,
                            num_key_value_heads=3)
    qwen3ish = SimpleNamespace(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=128)
    for config in (llama, qwen3ish):
        for rank, targets, dtype_bytes in ((8, ALL_MODULES, 2), (32, ["q_proj", "v_proj"], 2), (16, ["o_proj"], 4)):
            want = vllm_layer_bytes(config, rank, targets, dtype_bytes)
            got = impl.lora_slot_bytes(config, rank, list(targets), dtype_bytes)
            assert got == want, f"{config}, rank {rank}, {targets}: you say {got} bytes per slot, vLLM allocates {want}"


def test_slot_bytes_by_config(impl: Any) -> None:
    check_slot_bytes_by_config(impl)


def test_grader_catches_wrong_slot_bytes() -> None:
    with pytest.raises(AssertionError, match="vLLM allocates"):
        check_slot_bytes_by_config(load_implementation("lab9_lora", BROKEN))


@pytest.mark.engine
def test_slot_bytes_match_the_live_engine(impl: Any, engine_record: dict[str, Any]) -> None:
    """The same bytes as the A/B tensors a running engine allocated, and the rule above agrees with them."""
    config = SimpleNamespace(**engine_record["config"], head_dim=engine_record["head_dim"])
    rank, dtype_bytes, allocated = (engine_record[k] for k in ("max_lora_rank", "dtype_bytes", "bytes_per_slot"))
    assert vllm_layer_bytes(config, rank, ALL_MODULES, dtype_bytes) == allocated
    got = impl.lora_slot_bytes(config, rank, list(ALL_MODULES), dtype_bytes)
    assert got == allocated, f"you say {got} bytes per slot, the engine allocated {allocated}"


def test_learner_file_mirrors_the_reference() -> None:
    assert_learner_mirrors_reference("lab9_lora", {"lora_forward", "lora_rank_and_scaling", "lora_slot_bytes"})
