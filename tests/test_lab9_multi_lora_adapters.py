"""Lab 9's shipped LoRA adapters: built from today's recipe, in the format vLLM loads, and trainable.

No engine here and no training of the real adapters (minutes): the recipe check only hashes
inputs, as tests/test_models_build.py does for tiny-phrasebook itself.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from labs.core.models import adapters
from labs.core.models.adapters import ADAPTER_NAMES, RECIPES, adapter_key, shipped_adapter_dir


@pytest.mark.parametrize("name", ADAPTER_NAMES)
def test_shipped_adapter_was_built_from_todays_recipe(name: str) -> None:
    """Fails when the adapter's data, recipe, ADAPTER_BUILD_VERSION or the base model change without retraining."""
    info = json.loads((shipped_adapter_dir(name) / "build_info.json").read_text(encoding="utf-8"))
    assert info["key"] == adapter_key(name), (
        f"the shipped adapter {name!r} is stale: retrain with `{adapters.TRAIN_ADAPTERS_COMMAND}` and commit it")
    assert info["train"]["accuracy"] >= RECIPES[name].min_accuracy
    assert (shipped_adapter_dir(name) / "adapter_model.safetensors").stat().st_size < 2 * 2**20
    assert adapters.adapter_dir(name) == shipped_adapter_dir(name)


@pytest.mark.parametrize("name", ADAPTER_NAMES)
def test_shipped_adapter_is_what_vllm_accepts(name: str) -> None:
    """vLLM's own PEFTHelper reads the config and accepts it at the lab's max_lora_rank; tensors match it."""
    from vllm.config.lora import LoRAConfig
    from vllm.lora.peft_helper import PEFTHelper

    folder = shipped_adapter_dir(name)
    helper = PEFTHelper.from_local_dir(str(folder), max_position_embeddings=2048)
    helper.validate_legal(LoRAConfig(max_lora_rank=16, max_loras=3))
    recipe = RECIPES[name]
    expected_scaling = recipe.alpha / (recipe.rank ** 0.5 if recipe.use_rslora else recipe.rank)
    assert helper.vllm_lora_scaling_factor == pytest.approx(expected_scaling)
    config = json.loads((adapters.SHIPPED_DIR / "tiny-phrasebook" / "config.json").read_text())
    tensors = load_file(folder / "adapter_model.safetensors")
    assert len(tensors) == 2 * len(recipe.target_modules) * config["num_hidden_layers"]
    for key, t in tensors.items():
        assert key.startswith("base_model.model.model.layers.") and t.dtype == torch.bfloat16, key
        assert (t.shape[0] if ".lora_A." in key else t.shape[1]) == recipe.rank, (key, t.shape)


def test_a_changed_recipe_makes_the_shipped_adapter_stale(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setitem(adapters.RECIPES, "glossary", dataclasses.replace(RECIPES["glossary"], steps=301))
    with pytest.raises(adapters.StaleAdapterError, match="train-adapters --ship"):
        adapters.adapter_dir("glossary", models_root=tmp_path)


def test_the_glossary_pairs_change_what_the_glossary_says() -> None:
    pairs = adapters.adapter_pairs("glossary")
    changed = [answer for _, answer in pairs if "你" in answer or "哪儿" in answer or "啥" in answer]
    assert changed and not any("您" in answer or "哪里" in answer for _, answer in pairs)
    assert adapters.apply_glossary("您在哪里？") == "你在哪儿？"
    english = adapters.adapter_pairs("english")
    assert english[0] == ("おはようございます。", "Good morning.") and all(a.isascii() for _, a in english)


def test_lora_training_starts_at_the_base_model_and_lowers_the_loss() -> None:
    """A few steps on a small random Qwen2: B = 0 keeps step 0 exact, training moves only A/B, PEFT names."""
    from transformers import PreTrainedTokenizerFast

    from labs.core.models import build, lora_train
    from labs.core.models.capstone_format import answer_loss
    from labs.core.models.recipe import TinyModelConfig
    from labs.core.models.train import encode_example

    tok = PreTrainedTokenizerFast.from_pretrained(build.SHIPPED_PHRASEBOOK_DIR)
    small = TinyModelConfig(hidden_size=64, num_attention_heads=1, num_key_value_heads=1, num_hidden_layers=1,
                            intermediate_size=128)
    model = build.random_model("tiny-random", small, tok)
    recipe = dataclasses.replace(RECIPES["glossary"], steps=12, warmup_steps=1, learning_rate=1e-2)
    batch = [encode_example(tok, ja, answer) for ja, answer in adapters.adapter_pairs("glossary")[:8]]
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = answer_loss(model, tok.pad_token_id, [], batch).item()
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.num_threads)
    try:
        wrapped, record = lora_train.train_adapter(model, tok, recipe, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)  # the other tests of this worker keep theirs
    with torch.no_grad():
        after = answer_loss(model, tok.pad_token_id, [], batch).item()
    assert after < before, (before, after)
    assert all(torch.equal(m.base.weight, frozen[f"{name}.weight"]) for name, m in wrapped.items())
    state = lora_train.peft_state_dict(wrapped)
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in state
    assert record["num_examples"] == len(adapters.adapter_pairs("glossary"))
