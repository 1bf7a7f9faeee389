"""Put the workbook's offline models into `models/`: `tiny-phrasebook`, `tiny-random`, `tiny-llama`.

All three are architectures vLLM runs with its real implementations (Qwen2, Llama), so whatever a
lab shows about them transfers to real models.

- `tiny-phrasebook` is trained (labs/core/models/train.py, ~10 minutes on 2 cores), so its weights are
  shipped in `labs/core/models/shipped/tiny-phrasebook/` with the recipe key they were built from;
  `install` copies them into `models/` when that key is today's, and refuses otherwise (a changed
  recipe needs `python -m labs.core.models train --ship`). Nothing trains unless asked.
- `tiny-random` (Qwen2) and `tiny-llama` (Llama, 9 query heads over 3 KV heads) are random
  weights from a seed, generated in seconds with the shipped tokenizer.

Each model folder holds `build_info.json` with its key; a matching key means there is nothing to do.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from labs.core.errors import WorkbookError
from labs.core.models.recipe import (CapstoneTrainConfig, TinyLlamaConfig, TinyModelConfig, TrainConfig, build_key,
                                phrasebook_key)
from labs.core.models.resolve import WORKBOOK_MODELS_DIR

SHIPPED_DIR = Path(__file__).with_name("shipped")
SHIPPED_PHRASEBOOK_DIR = SHIPPED_DIR / "tiny-phrasebook"
MODEL_NAMES = ("tiny-phrasebook", "tiny-random", "tiny-llama")
TRAIN_COMMAND = "python -m labs.core.models train --ship"


class StaleShippedModelError(WorkbookError):
    """The shipped weights were built from another recipe than the code describes today."""


def read_key(model_dir: Path) -> str | None:
    """The recipe key recorded in a model folder.

    Args:
        model_dir: a folder written by this module (or the shipped one).

    Returns:
        `key` from its build_info.json, or None when there is none.
    """
    info = model_dir / "build_info.json"
    return json.loads(info.read_text(encoding="utf-8")).get("key") if info.is_file() else None


def _copy_atomically(src: Path, out_dir: Path) -> None:
    """Copy a model folder so that a half-copied folder never looks like a finished one."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def save_model(model, tok, out_dir: Path, info: dict) -> None:
    """Save weights (bf16 safetensors), tokenizer and build_info.json atomically into `out_dir`."""
    import torch

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = [eos_id, tok.pad_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.do_sample = False
    model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "build_info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def install_phrasebook(out_root: Path = WORKBOOK_MODELS_DIR, force: bool = False, log=print) -> Path:
    """Make tiny-phrasebook ready in `out_root`: already there with today's key, or copied from the shipped files.

    Args:
        out_root: the models folder (the repository's `models/`).
        force: copy even if an identical model is there.
        log: where progress lines go.

    Returns:
        The model folder.

    Raises:
        StaleShippedModelError: the data, prompts, configs or build version changed since the
            shipped weights were trained; the message says how to retrain them.
    """
    expected, shipped = phrasebook_key(), read_key(SHIPPED_PHRASEBOOK_DIR)
    out_dir = out_root / "tiny-phrasebook"
    if not force and read_key(out_dir) == expected:  # installed, or retrained here by `train`
        log(f"tiny-phrasebook: up to date in {out_dir}")
        return out_dir
    if shipped != expected:
        raise StaleShippedModelError(
            f"The shipped tiny-phrasebook ({SHIPPED_PHRASEBOOK_DIR}) was trained from recipe key {shipped}, but "
            f"the data, prompts and configs give {expected} today (see labs/core/models/recipe.py). Retrain and replace "
            f"the shipped files with `{TRAIN_COMMAND}` (about 10 minutes on 2 cores), then commit them.")
    _copy_atomically(SHIPPED_PHRASEBOOK_DIR, out_dir)
    log(f"tiny-phrasebook: installed the shipped weights into {out_dir} (recipe key {expected})")
    return out_dir


def random_model(name: str, cfg: TinyModelConfig | TinyLlamaConfig, tok):
    """A model with the architecture of `name` and random weights drawn from `cfg.seed`.

    Args:
        name: "tiny-llama" gives a Llama model, anything else Qwen2 (tiny-phrasebook starts as one).
        cfg: the shape and seed.
        tok: the tokenizer (its size, end-of-turn and pad ids go into the config).

    Returns:
        The model in float32 (training and HF checks run in it; `save_model` stores bfloat16).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if name == "tiny-llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = config_cls(
        vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id, torch_dtype="bfloat16")
    torch.manual_seed(cfg.seed)
    return model_cls(config).float()


def build_random(name: str, out_root: Path = WORKBOOK_MODELS_DIR, force: bool = False, log=print) -> Path:
    """Generate `tiny-random` or `tiny-llama` from its seed, with the shipped tokenizer (seconds).

    Args:
        name: "tiny-random" or "tiny-llama".
        out_root: the models folder.
        force: regenerate even if the folder holds today's key.
        log: where progress lines go.

    Returns:
        The model folder.
    """
    from transformers import PreTrainedTokenizerFast

    cfg = TinyLlamaConfig() if name == "tiny-llama" else TinyModelConfig()
    key, out_dir = build_key(name, cfg), out_root / name
    if not force and read_key(out_dir) == key:
        log(f"{name}: up to date in {out_dir}")
        return out_dir
    tok = PreTrainedTokenizerFast.from_pretrained(SHIPPED_PHRASEBOOK_DIR)
    model = random_model(name, cfg, tok)
    save_model(model, tok, out_dir, {"key": key, "name": name, "model": asdict(cfg)})
    log(f"{name}: generated from seed {cfg.seed} into {out_dir} "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    return out_dir


def build_model(name: str, out_root: Path = WORKBOOK_MODELS_DIR, force: bool = False, log=print) -> Path:
    """Make model `name` ready in `out_root/name`: the shipped weights, or generated from a seed.

    Args:
        name: one of MODEL_NAMES.
        out_root: the models folder.
        force: redo even if an identical build is there.
        log: where progress lines go.

    Returns:
        The model folder.
    """
    if name not in MODEL_NAMES:
        raise WorkbookError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if name == "tiny-phrasebook":
        return install_phrasebook(out_root, force, log)
    return build_random(name, out_root, force, log)


def train_phrasebook_model(out_root: Path = WORKBOOK_MODELS_DIR, ship: bool = False, log=print) -> Path:
    """Train tiny-phrasebook from scratch into `out_root` (and into the shipped folder with `ship`).

    Args:
        out_root: the models folder; the result is `out_root/tiny-phrasebook`, which `install_phrasebook`
            then keeps (its key is today's) even before the shipped files are replaced.
        ship: also replace labs/core/models/shipped/tiny-phrasebook (to be committed with the recipe change).
        log: where progress lines go.

    Returns:
        The model folder.

    Raises:
        RuntimeError: the model missed an accuracy target; nothing was saved.
    """
    import torch

    from labs.core.models import capstone_format
    from labs.core.models.recipe import MIN_CAPSTONE_ACCURACY, MIN_PHRASEBOOK_ACCURACY
    from labs.core.models.tokenizer import train_tokenizer
    from labs.core.models.train import phrasebook_accuracy, train_capstone, train_phrasebook

    model_cfg, train_cfg, capstone_cfg = TinyModelConfig(), TrainConfig(), CapstoneTrainConfig()
    previous = json.loads((SHIPPED_PHRASEBOOK_DIR / "build_info.json").read_text(encoding="utf-8")) \
        if (SHIPPED_PHRASEBOOK_DIR / "build_info.json").is_file() else {}
    seconds = previous.get("train", {}).get("train_seconds", 90) + previous.get("capstone", {}).get("train_seconds", 540)
    log(f"Training tiny-phrasebook: the shipped build took {seconds / 60:.0f} minutes on the machine that made it "
        "(2 idle cores); each phase's bar shows its own estimate.")
    torch.set_num_threads(train_cfg.num_threads)
    tok = train_tokenizer(out_root / "tokenizer")
    model = random_model("tiny-random", model_cfg, tok)
    info: dict = {"key": phrasebook_key(), "name": "tiny-phrasebook", "model": asdict(model_cfg)}
    info["train"] = asdict(train_cfg) | train_phrasebook(model, tok, train_cfg)
    info["capstone"] = asdict(capstone_cfg) | train_capstone(model, tok, capstone_cfg)
    # Measured after rounding to bfloat16, the dtype vLLM runs it in and the file holds.
    model = model.to(torch.bfloat16).float().eval()
    info["train"]["phrasebook_accuracy"] = accuracy = phrasebook_accuracy(model, tok)
    log(f"  phrasebook exact after rounding to bfloat16: {accuracy:.1%}")
    if accuracy < MIN_PHRASEBOOK_ACCURACY:
        raise RuntimeError(f"tiny-phrasebook reached only {accuracy:.1%} exact phrasebook translations "
                           f"(target {MIN_PHRASEBOOK_ACCURACY:.0%}); the model was not saved.")
    every_entry = capstone_format.held_out_requests(capstone_cfg.paragraph_counts)
    info["capstone"]["phrasebook_accuracy"] = accuracy = capstone_format.capstone_accuracy(model, tok, every_entry)
    log(f"  phrasebook exact in the capstone's format after rounding to bfloat16: {accuracy:.1%}")
    if accuracy < MIN_CAPSTONE_ACCURACY:
        raise RuntimeError(f"tiny-phrasebook translated only {accuracy:.1%} of the phrasebook exactly in the "
                           f"capstone's format (target {MIN_CAPSTONE_ACCURACY:.0%}); the model was not saved.")
    out_dir = out_root / "tiny-phrasebook"
    save_model(model, tok, out_dir, info)
    if ship:
        _copy_atomically(out_dir, SHIPPED_PHRASEBOOK_DIR)
        log(f"  replaced the shipped weights in {SHIPPED_PHRASEBOOK_DIR}: commit them with the recipe change")
    return out_dir
