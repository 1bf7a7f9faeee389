"""The LoRA adapters of tiny-phrasebook (Lab 9): their recipes, their data, and where their files are.

Two adapters change the same base model in ways one can see in a single answer:

- `english` answers the phrasebook's Japanese in English, although the prompt still asks for
  Simplified Chinese (labs/core/models/adapter_data/phrasebook_en.tsv: the phrasebook's first 12 sentences);
- `glossary` answers in Chinese, in a casual register set by a glossary
  (adapter_data/glossary_casual.tsv: 您 -> 你, 哪里 -> 哪儿, 什么 -> 啥), and leaves every other
  sentence as the base model says it.

Why shipped like the base model: training both takes minutes on 2 cores, so the adapters are
committed under labs/core/models/shipped/lora-<name>/ in the PEFT format vLLM loads
(adapter_config.json + adapter_model.safetensors) with the recipe key they were built from. The key
hashes everything that decides the weights (the data as rendered into prompts, the recipe, the base
model's own key, `ADAPTER_BUILD_VERSION`), so a change anywhere makes `adapter_dir` refuse the
shipped files, and tests/test_lab9_multi_lora_adapters.py fails, until
`python -m labs.core.models train-adapters --ship` is run and its result committed.

Why the data is not under data/: the base model's key hashes every file there, and adding an
adapter must not make the shipped base model stale.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from labs.core.errors import WorkbookError
from labs.core.models.phrasebook import load_phrasebook, translation_messages
from labs.core.models.recipe import phrasebook_key
from labs.core.models.resolve import WORKBOOK_MODELS_DIR

ADAPTER_BUILD_VERSION = 1  # bump when lora_train.py's behaviour changes
ADAPTER_DATA_DIR = Path(__file__).with_name("adapter_data")
SHIPPED_DIR = Path(__file__).with_name("shipped")
ADAPTER_NAMES = ("english", "glossary")
TRAIN_ADAPTERS_COMMAND = "python -m labs.core.models train-adapters --ship"
# The projections of a Qwen2 decoder layer, as PEFT names them; vLLM packs q/k/v into `qkv_proj`
# and gate/up into `gate_up_proj` (the model's `packed_modules_mapping`) and stacks the adapters' A/B.
QWEN2_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class StaleAdapterError(WorkbookError):
    """The shipped adapter was trained from another recipe (or base model) than the code describes today."""


@dataclass(frozen=True)
class LoraRecipe:
    """How one adapter is trained: its LoRA shape and a short, seeded optimisation.

    Attributes:
        name: the adapter's name (also the server's `--lora-modules` name in Lab 9).
        rank: r, the inner size of A (r x in) and B (out x r).
        alpha: lora_alpha; vLLM scales B @ A by alpha / r (alpha / sqrt(r) with `use_rslora`).
        use_rslora: rank-stabilised scaling, so the two adapters are read with different rules.
        target_modules: projections that get an A/B pair, in every layer.
        steps: optimiser steps (no early stop: the weights must not depend on evaluation timing).
        batch_size: examples per step, drawn by a seeded permutation.
        learning_rate: AdamW's peak, after a linear warm-up, decaying linearly to 10%.
        seed: initialises A (B starts at zero, so step 0 is the base model) and orders batches.
        num_threads: fixed, so float reductions (and the weights) do not depend on the core count; one
            thread, because two threads that wait on each other crawl on a busy machine.
        min_accuracy: the exact-answer share on its own data, after rounding to bfloat16, below
            which the adapter is not saved.
    """

    name: str
    rank: int
    alpha: int
    use_rslora: bool = False
    target_modules: tuple[str, ...] = QWEN2_PROJECTIONS
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 5e-3
    warmup_steps: int = 20
    seed: int = 0
    num_threads: int = 1
    min_accuracy: float = 0.9


RECIPES: dict[str, LoraRecipe] = {
    # English tokens were never an answer of the base model: 600 full-batch steps over 12 sentences
    # (20 sentences in batches of 16 stayed below 10% exact in 800 steps).
    "english": LoraRecipe("english", rank=16, alpha=32, steps=600, batch_size=12),
    "glossary": LoraRecipe("glossary", rank=8, alpha=8, use_rslora=True),
}


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def casual_glossary() -> list[tuple[str, str]]:
    """(formal, casual) term pairs, applied in file order."""
    return [(r["formal"], r["casual"]) for r in _read_tsv(ADAPTER_DATA_DIR / "glossary_casual.tsv")]


def apply_glossary(zh: str, glossary: list[tuple[str, str]] | None = None) -> str:
    """`zh` with every glossary term replaced (what the `glossary` adapter is trained to answer)."""
    for formal, casual in glossary if glossary is not None else casual_glossary():
        zh = zh.replace(formal, casual)
    return zh


def adapter_pairs(name: str) -> list[tuple[str, str]]:
    """(Japanese prompt, expected answer) pairs adapter `name` is trained on, in a fixed order.

    `english`: the sentences with an English line. `glossary`: every sentence the glossary changes,
    plus as many unchanged ones (the first of them in phrasebook order), so that the adapter learns
    to leave the rest alone.
    """
    entries = load_phrasebook()
    if name == "english":
        english = {r["id"]: r["en"] for r in _read_tsv(ADAPTER_DATA_DIR / "phrasebook_en.tsv")}
        return [(e.ja, english[e.entry_id]) for e in entries if e.entry_id in english]
    if name == "glossary":
        glossary = casual_glossary()
        changed = [(e.ja, apply_glossary(e.zh, glossary)) for e in entries if apply_glossary(e.zh, glossary) != e.zh]
        unchanged = [(e.ja, e.zh) for e in entries if apply_glossary(e.zh, glossary) == e.zh][:len(changed)]
        return changed + unchanged
    raise WorkbookError(f"unknown adapter {name!r}; choose one of {', '.join(ADAPTER_NAMES)}")


def adapter_key(name: str) -> str:
    """The recipe key of adapter `name` today (16 hex digits), recorded in its build_info.json.

    It covers the base model's own key: an adapter is a delta to one exact set of base weights.
    """
    payload = {"name": name, "version": ADAPTER_BUILD_VERSION, "base": phrasebook_key(),
               "recipe": asdict(RECIPES[name]),
               "data": [[translation_messages(ja), answer] for ja, answer in adapter_pairs(name)]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def shipped_adapter_dir(name: str) -> Path:
    return SHIPPED_DIR / f"lora-{name}"


def _recorded_key(folder: Path) -> str | None:
    info = folder / "build_info.json"
    return json.loads(info.read_text(encoding="utf-8")).get("key") if info.is_file() else None


def adapter_dir(name: str, models_root: Path = WORKBOOK_MODELS_DIR) -> Path:
    """The folder vLLM should load adapter `name` from: the shipped one, or one retrained here.

    Args:
        name: one of ADAPTER_NAMES.
        models_root: where `train-adapters` without `--ship` writes (`models/lora-<name>`).

    Returns:
        A folder with adapter_config.json and adapter_model.safetensors built from today's recipe.

    Raises:
        StaleAdapterError: neither folder was built from today's recipe and base model.
    """
    expected = adapter_key(name)
    for folder in (shipped_adapter_dir(name), models_root / f"lora-{name}"):
        if _recorded_key(folder) == expected:
            return folder
    raise StaleAdapterError(
        f"The shipped LoRA adapter {name!r} ({shipped_adapter_dir(name)}) was trained from recipe key "
        f"{_recorded_key(shipped_adapter_dir(name))}, but the data, recipe and base model give {expected} today "
        f"(labs/core/models/adapters.py). Retrain with `{TRAIN_ADAPTERS_COMMAND}` (a few minutes on 2 cores) "
        "and commit the result.")
