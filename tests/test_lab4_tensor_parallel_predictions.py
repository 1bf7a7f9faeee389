"""Lab 4's prediction checks: the live values (two real ranks, vLLM's TP=2 workers) are right, and a
wrong guess is called wrong.

The expectations are independent of the code under test: the all-reduce count from the checkpoint's
config (Megatron: one after the vocab-parallel embedding, two per block), the parameters per rank
from the checkpoint's tensors, split as the reference solution splits them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from labs.core.mini.config import ModelShape
from labs.core.predict import NO_PREDICTION
from labs.lab4_tensor_parallel import checks, predictions
from labs.lab4_tensor_parallel import solution as tp_ref

pytestmark = pytest.mark.all_cores  # TP=2 on the CPU: a core per rank (tests/workers.py)


@pytest.fixture(scope="module")
def rank_outputs(model_path: Path, hf_model: Any) -> list[dict[str, Any]]:
    """The notebook's run: the from-scratch model on 2 real ranks, every all-reduce counted."""
    _, outs = checks.run_equivalence(model_path, checks.phrasebook_prompt_ids(model_path), world_size=2,
                                     hf_model=hf_model)
    return outs


def test_all_reduces_per_forward_are_counted_on_the_real_ranks(rank_outputs: list[dict[str, Any]],
                                                              model_path: Path) -> None:
    expected = 1 + 2 * ModelShape.from_model_dir(model_path).num_hidden_layers
    assert predictions.all_reduces_per_forward(rank_outputs) == expected
    right = predictions.check_all_reduces_per_forward(expected, rank_outputs, quiet=True)
    assert right.right is True and right.actual == expected
    wrong = predictions.check_all_reduces_per_forward(2 * (expected - 1), rank_outputs, quiet=True)  # forgot the embedding... and doubled
    assert wrong.right is False and "wrong by" in wrong.message
    none = predictions.check_all_reduces_per_forward(None, rank_outputs, quiet=True)
    assert none.right is None and NO_PREDICTION in none.message and "vocab-parallel embedding" in none.message


def test_ranks_that_disagree_are_refused(rank_outputs: list[dict[str, Any]]) -> None:
    from labs.core.errors import WorkbookError

    other = {**rank_outputs[1], "reduces": {**rank_outputs[1]["reduces"], "model": 0}}
    with pytest.raises(WorkbookError, match="different numbers"):
        predictions.all_reduces_per_forward([rank_outputs[0], other])


def checkpoint_params(model_path: Path) -> int:
    total = 0
    with safe_open(str(model_path / "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            numel = 1
            for dim in f.get_slice(name).get_shape():
                numel *= dim
            total += numel
    return total


@pytest.mark.engine
def test_params_per_rank_are_read_from_vllms_tp2_workers(model_path: Path) -> None:
    from labs.lab4_tensor_parallel.vllm_tp import run_tp_in_subprocess

    report = run_tp_in_subprocess(2)  # cached: test_lab4_tensor_parallel.py runs the same engine
    shape = ModelShape.from_model_dir(model_path)
    expected = tp_ref.num_params_per_rank(shape, 2)
    whole = checkpoint_params(model_path)
    assert predictions.params_per_rank(report) == expected
    assert 0.5 <= expected / whole < 0.52, (expected, whole)  # split, but for the replicated norms (and vocab padding)
    assert predictions.check_params_per_rank(expected, report, whole, quiet=True).right is True
    assert predictions.check_params_per_rank(round(expected * 1.005), report, whole, quiet=True).right is True  # 1%
    wrong = predictions.check_params_per_rank(whole, report, whole, quiet=True)  # "each rank holds the whole model"
    assert wrong.right is False and "wrong by" in wrong.message
    none = predictions.check_params_per_rank(None, report, whole, quiet=True)
    assert none.right is None and NO_PREDICTION in none.message and f"{expected:,}" in none.message
