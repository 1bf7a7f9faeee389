"""What the labs may expect of a model's *text*, so that they judge answers only where that is fair.

Why: the labs run on any model (`VLLM_MODEL`). Only `tiny-phrasebook` was trained on the
workbook's phrasebook, so only its answers can be checked against it (✓/✗); the workbook's
random models (`tiny-random`, `tiny-llama`) write noise by design; a real model translates in its
own words. Everything else a lab shows (blocks, steps, queues, timings) holds for every model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PHRASEBOOK_MODEL = "tiny-phrasebook"
RANDOM_MODELS = ("tiny-random", "tiny-llama")


@dataclass(frozen=True)
class ModelTraits:
    """Attributes:
        name: the workbook's name for it (build_info.json), else the folder name.
        knows_phrasebook: trained on labs/core/models/data's phrasebook: its answers can be checked.
        random_weights: one of the workbook's random-weight models: its text is noise.
    """

    name: str
    knows_phrasebook: bool
    random_weights: bool

    def why_unchecked(self) -> str:
        """One sentence: why this model's answers are shown but not checked against the phrasebook."""
        if self.random_weights:
            return (f"{self.name} has random weights (the workbook runs the labs on it, nobody reads its text), "
                    "so its text is noise by design; its answers are shown, not checked.")
        return (f"{self.name} was not trained on the workbook's phrasebook, so its answers are shown next to the "
                f"phrasebook's, not checked (only {PHRASEBOOK_MODEL} is expected to reproduce them).")


def _model_path(model: Any) -> Path:
    run_info = getattr(model, "workbook_run_info", None)  # a vllm.LLM from labs.core.engine.make_llm
    if run_info is not None:
        return Path(run_info.model.path)
    return Path(str(model))


def model_traits(model: Any) -> ModelTraits:
    """The traits of a model folder, or of the model a `make_llm` engine runs.

    Args:
        model: a model folder (str or Path) or a `vllm.LLM` made by `labs.core.engine.make_llm`.
    """
    path = _model_path(model)
    info_file = path / "build_info.json"
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    name = info.get("name") or path.name
    return ModelTraits(name=name, knows_phrasebook=name == PHRASEBOOK_MODEL,
                       random_weights=name in RANDOM_MODELS)


def translation_lines(entries: list[Any], outputs: list[Any], traits: ModelTraits) -> list[str]:
    """Lab 1's translations: checked (✓/✗) for the phrasebook model, shown beside the reference otherwise.

    Args:
        entries: phrasebook entries (`.ja`, `.zh`).
        outputs: `vllm.RequestOutput`s answering them, in order.
        traits: the model's `model_traits`.
    """
    if traits.knows_phrasebook:
        return [f"{'✓' if out.outputs[0].text == e.zh else '✗'} {e.ja}  ->  {out.outputs[0].text}"
                for e, out in zip(entries, outputs)]
    return [traits.why_unchecked()] + [f"  {e.ja}  ->  {out.outputs[0].text!r}   (phrasebook: {e.zh})"
                                       for e, out in zip(entries, outputs)]
