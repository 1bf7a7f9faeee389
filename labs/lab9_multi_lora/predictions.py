"""Lab 9's predictions, checked against the live multi-LoRA engine.

    english answer   in which language the `english` adapter answers a prompt that still asks for
                     Simplified Chinese (the adapter's answer, read from the engine)
    mixing cost      how many times longer a batch that mixes two adapters takes than the same batch
                     with one adapter (`multi_lora.mixing_cost`, measured side by side)
    slot memory      KB of A/B tensors vLLM allocated for one adapter slot (the engine's own tensors,
                     `vi.bytes_per_slot`)

Why here and not in the notebook: the same functions are tested against the raw values
(tests/test_lab9_multi_lora_predictions.py), including a wrong guess being called wrong.
"""

from __future__ import annotations

import pandas as pd

from labs.core.predict import Verdict, check_choice, check_number

LANGUAGES = ("Chinese", "English", "Japanese")


def answer_language(text: str) -> str:
    """"English" when the answer is Latin letters, "Japanese" when it holds kana, else "Chinese"."""
    if any("\u3040" <= ch <= "\u30ff" for ch in text):
        return "Japanese"
    letters = [ch for ch in text if ch.isalpha()]
    return "English" if letters and all(ch.isascii() for ch in letters) else "Chinese"


def check_english_answer(predicted: str | None, answer: str, base_answer: str, quiet: bool = False) -> Verdict:
    """The learner's language for the english adapter's answer, against the engine's answer."""
    why = (f"The engine answered {answer!r} with the adapter and {base_answer!r} without it, to the same prompt "
           "(whose system message still asks for Simplified Chinese). The base weights are the same in both "
           "requests; only the adapter's low-rank A/B terms, added to every projection, differ.")
    return check_choice("language of the english adapter's answer", predicted, answer_language(answer), why,
                        choices=LANGUAGES, quiet=quiet)


def check_mixing_slowdown(predicted: float | None, table: pd.DataFrame, tolerance: float = 0.25,
                          quiet: bool = False) -> Verdict:
    """The learner's slowdown factor of a mixed batch against a one-adapter batch (right within `tolerance`)."""
    mixed, single = float(table.loc["mixed batch", "seconds"]), float(table.loc["one adapter", "seconds"])
    apart = float(table.loc["one adapter at a time", "seconds"])
    why = (f"Measured side by side: the mixed batch took {mixed:.2f} s, the one-adapter batch {single:.2f} s, "
           f"the two adapters one batch after the other {apart:.2f} s. vLLM's CPU LoRA ops gather each token's "
           "own A and B by its slot index (bgmv), so the work per token does not depend on how many different "
           "adapters a batch holds; serving the adapters apart costs extra engine steps instead.")
    return check_number("mixed batch / one-adapter batch (time)", predicted, round(mixed / single, 2), why,
                        tolerance=tolerance, unit="x", quiet=quiet)


def check_slot_kb(predicted: float | None, slot_bytes: int, max_lora_rank: int, quiet: bool = False) -> Verdict:
    """The learner's KB per adapter slot, against the engine's allocation (right within 10%)."""
    why = (f"Read from the engine's LoRA layers: every targeted projection of every layer holds, per slot, "
           f"an A of (max_lora_rank={max_lora_rank} x in) and a B of (out x {max_lora_rank}), allocated at start "
           "whatever rank the adapters loaded later have (the glossary adapter's rank 8 fills half its slot).")
    return check_number("KB per adapter slot", predicted, round(slot_bytes / 1024, 1), why, tolerance=0.1,
                        relative=True, unit=" KB", quiet=quiet)
