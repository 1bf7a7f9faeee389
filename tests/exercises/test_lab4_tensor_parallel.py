"""Grades Lab 4 (tensor parallelism) against the checkpoint, real gloo ranks and real sharded shapes.

- shards: concatenated over the ranks they must give back the checkpoint's weight, and each
  rank's output must be the slice (column) or the partial sum (row) that Megatron's recipe needs;
- the sharded MLP: runs in 2 real processes (torch.distributed, gloo on the CPU / NCCL on GPUs)
  and must equal the one-process MLP of labs.core.mini, after exactly one all-reduce per rank;
- parameters per rank: against what the workbook's TP layers really build on every rank (1, 2, 4
  ranks; tiny-phrasebook and a Qwen2.5-0.5B-shaped config), and against vLLM's own TP=2 workers.

Runs the reference by default; `make grade LAB=4` (LABS_GRADE=learner) runs yours.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from labs.core.grading import load_implementation
from tests.exercises.mirror import assert_learner_mirrors_reference
from labs.core.mini.config import ModelShape
from labs.lab4_tensor_parallel.layers import build_rank_model, head_ids_for_rank

pytestmark = pytest.mark.all_cores  # TP=2 on the CPU: a core per rank (tests/workers.py)

BROKEN = "tests.exercises.broken_lab4"
WORLD_SIZES = (1, 2, 4)


@pytest.fixture(scope="module")
def impl() -> Any:
    return load_implementation("lab4_tensor_parallel")


@pytest.fixture(scope="module")
def checkpoint(model_path: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(str(model_path / "model.safetensors")).items()}


def check_column_shards(impl: Any, checkpoint: dict[str, torch.Tensor]) -> None:
    weight, bias = checkpoint["model.layers.0.self_attn.q_proj.weight"], checkpoint["model.layers.0.self_attn.q_proj.bias"]
    x = torch.randn(5, weight.shape[1], generator=torch.Generator().manual_seed(0))
    full_out = x @ weight.T + bias  # (5, out_features)
    for world_size in WORLD_SIZES:
        shards = [impl.shard_column_parallel(weight, bias, rank, world_size) for rank in range(world_size)]
        per_rank = weight.shape[0] // world_size
        for rank, (w, b) in enumerate(shards):
            assert tuple(w.shape) == (per_rank, weight.shape[1]), (
                f"column-parallel, {world_size} ranks: rank {rank}'s weight is {tuple(w.shape)}, "
                f"expected {(per_rank, weight.shape[1])} (a slice of the OUTPUT features)")
            out = x @ w.T + b
            expected = full_out[:, rank * per_rank:(rank + 1) * per_rank]
            assert torch.allclose(out, expected, atol=1e-5), (
                f"column-parallel, {world_size} ranks: rank {rank}'s output is not columns "
                f"{rank * per_rank}..{(rank + 1) * per_rank - 1} of the full output "
                f"(max diff {(out - expected).abs().max():.3g}); the row-parallel layer after it reads those")


def check_row_shards(impl: Any, checkpoint: dict[str, torch.Tensor]) -> None:
    weight = checkpoint["model.layers.0.mlp.down_proj.weight"]  # (hidden, intermediate)
    x = torch.randn(5, weight.shape[1], generator=torch.Generator().manual_seed(1))
    for world_size in WORLD_SIZES:
        per_rank = weight.shape[1] // world_size
        partials = []
        for rank in range(world_size):
            w = impl.shard_row_parallel(weight, rank, world_size)
            assert tuple(w.shape) == (weight.shape[0], per_rank), (
                f"row-parallel, {world_size} ranks: rank {rank}'s weight is {tuple(w.shape)}, "
                f"expected {(weight.shape[0], per_rank)} (a slice of the INPUT features)")
            partials.append(x[:, rank * per_rank:(rank + 1) * per_rank] @ w.T)
        total, expected = sum(partials), x @ weight.T
        assert torch.allclose(total, expected, atol=1e-4), (
            f"row-parallel, {world_size} ranks: the ranks' partial outputs (each fed its slice of the "
            f"input) do not sum to the full output (max diff {(total - expected).abs().max():.3g})")


def check_sharded_mlp(impl_module: str, model_path: Path, checkpoint: dict[str, torch.Tensor], layer: int = 1) -> None:
    from labs.core.mini.model import Qwen2MLP
    from labs.lab4_tensor_parallel.checks import mlp_exercise_task
    from labs.lab4_tensor_parallel.launcher import run_ranks

    shape = ModelShape.from_model_dir(model_path)
    dense = Qwen2MLP(shape)
    prefix = f"model.layers.{layer}.mlp."
    dense.load_state_dict({k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)})
    x = torch.randn(7, shape.hidden_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = dense(x)
    results = run_ranks(mlp_exercise_task, (impl_module, str(model_path), layer, x), world_size=2)
    for rank, result in enumerate(results):
        diff = (result["out"] - expected).abs().max().item()
        assert diff < 1e-4, (f"sharded MLP on 2 ranks: rank {rank}'s output differs from the one-process MLP "
                             f"by up to {diff:.3g} (after {result['num_all_reduces']} all-reduce(s))")
        assert result["num_all_reduces"] == 1, (
            f"sharded MLP: rank {rank} called all_reduce {result['num_all_reduces']} times; "
            "Megatron's MLP needs exactly one (after down_proj)")


def check_num_params(impl: Any, shapes: dict[str, ModelShape]) -> None:
    for name, shape in shapes.items():
        for world_size in WORLD_SIZES:
            if shape.num_attention_heads % world_size:
                continue
            for rank in sorted({0, world_size - 1}):
                model = build_rank_model(None, rank, world_size, lambda t, site="": t, shape=shape, device="meta")
                real = sum(p.numel() for p in model.parameters())
                predicted = impl.num_params_per_rank(shape, world_size)
                assert predicted == real, (
                    f"{name} on {world_size} rank(s): you predicted {predicted:,} parameters per rank; rank {rank} "
                    f"really holds {real:,} (off by {predicted - real:+,})")


def model_shapes(model_path: Path) -> dict[str, ModelShape]:
    tiny = ModelShape.from_model_dir(model_path)
    # Qwen2.5-0.5B's config: 14 query heads, 2 KV heads, a 151,936-token vocabulary (padded to 64s).
    qwen_05b = dataclasses.replace(tiny, vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                   num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, head_dim=64)
    return {"tiny-phrasebook": tiny, "Qwen2.5-0.5B-shaped": qwen_05b}


def test_column_parallel_shards(impl: Any, checkpoint: dict[str, torch.Tensor]) -> None:
    check_column_shards(impl, checkpoint)


def test_row_parallel_shards(impl: Any, checkpoint: dict[str, torch.Tensor]) -> None:
    check_row_shards(impl, checkpoint)


def test_uneven_split_is_refused(impl: Any, checkpoint: dict[str, torch.Tensor]) -> None:
    weight = checkpoint["model.layers.0.mlp.down_proj.weight"]
    with pytest.raises(ValueError):
        impl.shard_column_parallel(weight, None, 0, 3)
    with pytest.raises(ValueError):
        impl.shard_row_parallel(weight, 0, 5)


def test_sharded_mlp_in_two_real_ranks(impl: Any, model_path: Path, checkpoint: dict[str, torch.Tensor]) -> None:
    check_sharded_mlp(impl.__name__, model_path, checkpoint)


def test_kv_heads_per_rank(impl: Any) -> None:
    for num_kv_heads in (1, 2, 4, 8):
        for world_size in (1, 2, 4, 8):
            real = len(head_ids_for_rank(0, world_size, num_kv_heads))
            got = impl.num_kv_heads_per_rank(num_kv_heads, world_size)
            assert got == real, f"{num_kv_heads} KV heads over {world_size} ranks: you said {got}, each rank holds {real}"


def test_params_per_rank_match_the_tp_layers(impl: Any, model_path: Path) -> None:
    check_num_params(impl, model_shapes(model_path))


@pytest.mark.engine
def test_params_per_rank_match_vllm_workers(impl: Any, model_path: Path) -> None:
    """vLLM's own TP=2 workers (their repacked weights read back through their GEMMs)."""
    from labs.lab4_tensor_parallel.vllm_tp import run_tp_in_subprocess

    # Your answer first: an unanswered stub fails here, before a 20-second TP=2 engine start.
    predicted = impl.num_params_per_rank(ModelShape.from_model_dir(model_path), 2)
    report = run_tp_in_subprocess(2)
    for rank, weights in enumerate(report["weights"]):
        assert predicted == weights["num_params"], (
            f"vLLM's rank {rank} holds {weights['num_params']:,} parameters; you predicted {predicted:,}")


# --- The grader itself: wrong answers must fail, readably -------------------------------------

def test_grader_catches_wrong_shards(checkpoint: dict[str, torch.Tensor]) -> None:
    broken = load_implementation("lab4_tensor_parallel", BROKEN)
    with pytest.raises(AssertionError, match="column-parallel, 2 ranks: rank 0's output is not columns"):
        check_column_shards(broken, checkpoint)
    with pytest.raises(AssertionError, match="do not sum to the full output"):
        check_row_shards(broken, checkpoint)


def test_grader_catches_a_misplaced_all_reduce(model_path: Path, checkpoint: dict[str, torch.Tensor]) -> None:
    with pytest.raises(AssertionError, match="differs from the one-process MLP") as failure:
        check_sharded_mlp(BROKEN, model_path, checkpoint)
    assert "after 2 all-reduce(s)" in str(failure.value), str(failure.value)


def test_grader_catches_wrong_param_counts(model_path: Path) -> None:
    broken = load_implementation("lab4_tensor_parallel", BROKEN)
    with pytest.raises(AssertionError, match=r"on 4 rank\(s\): you predicted .* really holds"):
        check_num_params(broken, model_shapes(model_path))


def test_learner_file_mirrors_the_reference() -> None:
    assert_learner_mirrors_reference("lab4_tensor_parallel", {"shard_column_parallel", "shard_row_parallel",
                                                              "sharded_mlp_forward", "num_params_per_rank"})
