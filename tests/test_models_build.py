"""The offline models: shipped weights match their recipe, install without training, and training still runs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from labs.core.models import build
from labs.core.models.recipe import CapstoneTrainConfig, TinyModelConfig, TrainConfig, phrasebook_key


def test_shipped_phrasebook_was_built_from_todays_recipe() -> None:
    """Fails when data, rendered prompts, configs or BUILD_VERSION change without retraining."""
    assert build.read_key(build.SHIPPED_PHRASEBOOK_DIR) == phrasebook_key(), (
        f"the shipped tiny-phrasebook is stale: retrain with `{build.TRAIN_COMMAND}` and commit the result")
    assert (build.SHIPPED_PHRASEBOOK_DIR / "model.safetensors").stat().st_size < 16 * 2**20


def test_install_copies_shipped_weights_once(tmp_path: Path) -> None:
    messages: list[str] = []
    out_dir = build.install_phrasebook(tmp_path, log=messages.append)
    shipped = build.SHIPPED_PHRASEBOOK_DIR / "model.safetensors"
    assert (out_dir / "model.safetensors").read_bytes() == shipped.read_bytes()
    mtime = (out_dir / "model.safetensors").stat().st_mtime_ns
    build.install_phrasebook(tmp_path, log=messages.append)  # second use: nothing to do
    assert (out_dir / "model.safetensors").stat().st_mtime_ns == mtime
    assert "installed" in messages[0] and "up to date" in messages[1]


def test_a_model_retrained_here_is_kept_while_the_shipped_one_is_stale(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """After a recipe change, `make train` (without SHIP=1) writes models/ with today's key: set-up keeps it."""
    stale = tmp_path / "shipped"
    shutil.copytree(build.SHIPPED_PHRASEBOOK_DIR, stale)
    (stale / "build_info.json").write_text(json.dumps({"key": "0000000000000000"}))
    monkeypatch.setattr(build, "SHIPPED_PHRASEBOOK_DIR", stale)
    retrained = tmp_path / "models" / "tiny-phrasebook"
    shutil.copytree(stale, retrained)
    (retrained / "build_info.json").write_text(json.dumps({"key": phrasebook_key()}))
    assert build.install_phrasebook(tmp_path / "models", log=lambda _: None) == retrained


def test_a_changed_recipe_refuses_the_shipped_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "shipped"
    shutil.copytree(build.SHIPPED_PHRASEBOOK_DIR, stale)
    info = json.loads((stale / "build_info.json").read_text())
    (stale / "build_info.json").write_text(json.dumps(info | {"key": "0000000000000000"}))
    monkeypatch.setattr(build, "SHIPPED_PHRASEBOOK_DIR", stale)
    with pytest.raises(build.StaleShippedModelError, match="python -m labs.core.models train --ship"):
        build.install_phrasebook(tmp_path / "models")
    assert not (tmp_path / "models" / "tiny-phrasebook").exists()


def test_random_models_are_a_function_of_their_seed(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    first = build.build_random("tiny-llama", tmp_path / "a", log=lambda _: None)
    second = build.build_random("tiny-llama", tmp_path / "b", log=lambda _: None)
    config = json.loads((first / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_attention_heads"] % 2 == 1
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_smoke_train_lowers_the_loss() -> None:
    """Both training phases on a very small model for a few steps, so the training code cannot rot."""
    import torch
    from transformers import PreTrainedTokenizerFast

    from labs.core.models.train import train_capstone, train_phrasebook

    tok = PreTrainedTokenizerFast.from_pretrained(build.SHIPPED_PHRASEBOOK_DIR)
    small = TinyModelConfig(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=1,
                            intermediate_size=128)
    model = build.random_model("tiny-random", small, tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.set_num_threads(2)
    phase1 = train_phrasebook(model, tok, TrainConfig(max_epochs=3, first_eval_epoch=3, warmup_steps=1))
    phase2 = train_capstone(model, tok, CapstoneTrainConfig(steps=4, eval_every_steps=4, num_eval_requests=2, warmup_steps=1))
    uniform = math.log(len(tok))  # the loss of a model that knows nothing
    assert phase1["epochs"] == 3 and phase1["final_loss"] < 0.8 * uniform, phase1
    assert phase2["final_loss"] < uniform, phase2
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
