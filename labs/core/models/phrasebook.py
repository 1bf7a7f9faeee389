"""The workbook's Japanese-to-Chinese phrasebook and the one prompt format built on it.

Why one place: the model is trained on exactly these chat messages, and later labs, tests and
the translation capstone must send exactly the same ones to get the memorised translations back.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).with_name("data")
PHRASEBOOK_PATH = DATA_DIR / "phrasebook.tsv"
SYSTEM_PROMPT = "Translate the user's Japanese into Simplified Chinese."


@dataclass(frozen=True)
class PhrasebookEntry:
    """One sentence pair. `entry_id` is stable ("pb001") so results can be reported per pair."""

    entry_id: str
    ja: str
    zh: str


def load_phrasebook(path: Path = PHRASEBOOK_PATH) -> list[PhrasebookEntry]:
    """Read the tab-separated phrasebook (columns id, ja, zh)."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [PhrasebookEntry(r["id"], r["ja"], r["zh"]) for r in rows]


def translation_messages(ja: str) -> list[dict[str, str]]:
    """The chat messages that ask for a translation of `ja` (what the model was trained on)."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": ja}]
