"""Sample Japanese documents (and their reference translations) built from the phrasebook.

Why from the phrasebook: `tiny-phrasebook` translates those sentences exactly, so a job over
these documents has a known right answer: the capstone's end-to-end test compares the output
with it character for character, and the notebook's chrF against the references is 100 when
everything works. The text lives in one place (labs/core/models/data/phrasebook.tsv).
"""

from __future__ import annotations

from pathlib import Path

from labs.core.models.phrasebook import load_phrasebook

# document name -> phrasebook ids, one paragraph each, in order
SAMPLE_DOCUMENTS: dict[str, list[str]] = {
    "inference_notes": ["pb212", "pb213", "pb215", "pb217", "pb218", "pb221", "pb225", "pb226", "pb229",
                        "pb232", "pb233", "pb234", "pb235"],
    "travel_diary": ["pb001", "pb003", "pb101", "pb102", "pb104", "pb107", "pb110", "pb237", "pb239", "pb284",
                     "pb287", "pb288"],
    "emergency_card": ["pb291", "pb292", "pb293", "pb294", "pb295", "pb297", "pb298", "pb299", "pb300", "pb302",
                       "pb303", "pb305"],
}


def sample_paragraphs(name: str) -> tuple[list[str], list[str]]:
    """(Japanese paragraphs, reference Chinese paragraphs) of a sample document."""
    by_id = {e.entry_id: e for e in load_phrasebook()}
    entries = [by_id[i] for i in SAMPLE_DOCUMENTS[name]]
    return [e.ja for e in entries], [e.zh for e in entries]


def write_samples(folder: Path, names: list[str] | None = None, references: Path | None = None) -> list[Path]:
    """Write sample documents as UTF-8 `<name>.txt` (blank line between paragraphs).

    Args:
        folder: where the Japanese files go.
        names: which samples (default: all).
        references: if given, also write `<name>_zh.txt` reference translations there.

    Returns:
        The Japanese files written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names or list(SAMPLE_DOCUMENTS):
        ja, zh = sample_paragraphs(name)
        path = folder / f"{name}.txt"
        path.write_text("\n\n".join(ja) + "\n", encoding="utf-8")
        paths.append(path)
        if references is not None:
            references.mkdir(parents=True, exist_ok=True)
            (references / f"{name}_zh.txt").write_text("\n\n".join(zh) + "\n", encoding="utf-8")
    return paths


if __name__ == "__main__":  # python -m labs.capstone_translation.samples DIR [REFERENCE_DIR]
    import sys

    for written in write_samples(Path(sys.argv[1]), references=Path(sys.argv[2]) if len(sys.argv) > 2 else None):
        print(written)
