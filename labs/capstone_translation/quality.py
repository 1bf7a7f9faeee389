"""chrF of the translations against reference translations (sacrebleu).

Why chrF and not BLEU: Chinese has no spaces, so word-level BLEU depends on which segmenter was
used; chrF compares character n-grams and needs no segmentation. Paragraph alignment is the
pipeline's job, so the score is computed over aligned paragraphs (corpus-level chrF).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from labs.core.errors import WorkbookError
from labs.capstone_translation.source import read_document, split_paragraphs


def reference_for(name: str, source: Path, reference: Path) -> Path | None:
    """The reference file for a document: `reference` itself if it is a file, else the first of
    `<name>_zh.txt`, `<name>.zh.txt`, `<name>.txt`, `<source file name>` in the folder."""
    if reference.is_file():
        return reference
    for candidate in (f"{name}_zh.txt", f"{name}.zh.txt", f"{name}.txt", source.name):
        if (reference / candidate).is_file():
            return reference / candidate
    return None


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF (0-100) of aligned paragraphs."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise WorkbookError(f"the reference has {len(references)} paragraphs, the translation {len(hypotheses)}: "
                            "they must align paragraph by paragraph (blank lines between paragraphs)")
    return sacrebleu.corpus_chrf(hypotheses, [references]).score


def chrf_table(job: Any, reference: Path) -> pd.DataFrame:
    """One row per translated document: its chrF against the matching reference (NaN if none)."""
    rows = []
    for doc in job.documents:
        if doc.status == "failed" or doc.paths is None:
            continue
        ref_path = reference_for(doc.name, doc.source, reference)
        hypotheses = list(split_paragraphs(doc.paths.translation.read_text(encoding="utf-8")))
        score = chrf(hypotheses, list(read_document(ref_path).paragraphs)) if ref_path else float("nan")
        rows.append({"document": doc.name, "reference": str(ref_path or "(none found)"), "chrF": round(score, 2)})
    return pd.DataFrame(rows)
