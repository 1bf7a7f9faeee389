"""What a finished document leaves behind: the translation, a bilingual view, and its log.

- `<name>_zh.txt`: the translation only (paragraphs separated by blank lines), for downstream use;
- `<name>_zh.epub`: the translation as an e-book (`epub.py`), for reading;
- `<name>_bilingual.md`: source and translation side by side, paragraph by paragraph, for review;
  in a partial document (`--allow-partial`) the paragraphs without an acceptable translation
  keep their Japanese in every file and are flagged here, in the e-book and in the log, never passed silently;
- `logs/<name>.log`: the shared prompt once, then every chunk's source, translation, tokens,
  latency and retries, appended run after run (a resumed job shows both runs).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labs.capstone_translation.epub import write_epub
from labs.capstone_translation.journal import ChunkRecord, atomic_write_text

if TYPE_CHECKING:
    from labs.capstone_translation.plan import DocumentPlan


@dataclass(frozen=True)
class OutputPaths:
    translation: Path
    bilingual: Path
    log: Path
    journal: Path
    epub: Path

    @classmethod
    def for_document(cls, out_dir: Path, name: str) -> OutputPaths:
        return cls(out_dir / f"{name}_zh.txt", out_dir / f"{name}_bilingual.md",
                   out_dir / "logs" / f"{name}.log", out_dir / ".journal" / f"{name}.jsonl", out_dir / f"{name}_zh.epub")

    def documents(self) -> tuple[Path, ...]:
        """The files a finished document is read from (not its log or journal)."""
        return (self.translation, self.bilingual, self.epub)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def assemble(plan: DocumentPlan, records: dict[int, ChunkRecord]) -> list[str]:
    """One translation per source paragraph: the segments of a split paragraph are rejoined.

    A chunk without a record (a partial document) contributes its source text instead.

    Args:
        plan: the document's plan (its paragraphs, segments and chunks).
        records: chunk index -> its journaled translation.

    Returns:
        One string per paragraph of `plan.doc`, in order.
    """
    by_paragraph: list[list[str]] = [[] for _ in plan.doc.paragraphs]
    for chunk in plan.chunks:
        segments = plan.segments[chunk.start:chunk.end]
        texts = records[chunk.index].translations if chunk.index in records else [s.text for s in segments]
        for segment, text in zip(segments, texts):
            by_paragraph[segment.paragraph_index].append(text)
    return ["".join(parts) for parts in by_paragraph]


UNTRANSLATED_FLAG = "⚠ NOT TRANSLATED (source kept)"
PARTIAL_NOTE = "> **Partial translation**"  # heads the bilingual file of a partial document


def bilingual_markdown(title: str, sources: list[str], translations: list[str],
                       unresolved: dict[int, str] | None = None) -> str:
    """The review table; each paragraph in `unresolved` (index -> why) is flagged in its row.

    Args:
        title: the heading (the source file's name).
        sources / translations: one per paragraph.
        unresolved: paragraph index (0-based) -> why it has no translation; any makes the file
            start with `PARTIAL_NOTE`.

    Returns:
        The Markdown text, one table row per paragraph.
    """
    unresolved = unresolved or {}
    rows = [f"| {i} | {_cell(ja)} | "
            f"{f'**{UNTRANSLATED_FLAG}**: {_cell(unresolved[i - 1])}<br>' if i - 1 in unresolved else ''}{_cell(zh)} |"
            for i, (ja, zh) in enumerate(zip(sources, translations), start=1)]
    note = []
    if unresolved:
        numbers = ", ".join(str(i + 1) for i in sorted(unresolved))
        note = [f"{PARTIAL_NOTE}: paragraph(s) {numbers} got no acceptable translation and are kept "
                "in Japanese (flagged below). Rerun the same command to retry them.", ""]
    return "\n".join([f"# {title}", "", *note, "| # | 日本語 | 中文 |", "|---:|---|---|", *rows, ""])


def write_outputs(paths: OutputPaths, title: str, sources: list[str], translations: list[str],
                  unresolved: dict[int, str] | None = None) -> None:
    """Write the three outputs atomically (a killed run never leaves half a file behind).

    Args:
        paths: where.
        title: the bilingual file's heading.
        sources / translations: one per paragraph (an unresolved paragraph's translation is its source).
        unresolved: paragraph index -> why it has no translation (a partial document), flagged in
            the bilingual file.
    """
    atomic_write_text(paths.translation, "\n\n".join(translations) + "\n")
    atomic_write_text(paths.bilingual, bilingual_markdown(title, sources, translations, unresolved))
    write_epub(paths.epub, title, translations, unresolved, UNTRANSLATED_FLAG)


def move_aside_partial(paths: OutputPaths) -> list[Path]:
    """Rename a partial document's outputs left by an earlier run, so no `_zh.txt` stays behind
    that looks finished while the run reports the document as failed. Moved, not deleted: they
    are the user's files (and every translated chunk of them is in the journal as well).

    Args:
        paths: the document's outputs.

    Returns:
        Where they went (`<name>_zh.partial-<time>.txt`, ...), or [] when there was no partial output.
    """
    bilingual = paths.bilingual.read_text(encoding="utf-8") if paths.bilingual.is_file() else ""
    if PARTIAL_NOTE not in bilingual:
        return []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for path in paths.documents():
        if path.exists():
            target = path.with_name(f"{path.stem}.partial-{stamp}{path.suffix}")
            path.rename(target)
            moved.append(target)
    return moved


class DocumentLog:
    """The per-document log, appended to as chunks finish (one write per entry)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, text: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text.rstrip("\n") + "\n")

    def run_header(self, lines: list[str], shared_messages: list[dict[str, str]], num_shared_tokens: int) -> None:
        prompt = "\n".join(f"<{m['role']}>\n{m['content']}" for m in shared_messages)
        self.write("\n".join([f"=== run {time.strftime('%Y-%m-%d %H:%M:%S')} ===", *lines,
                              f"--- shared prompt: first in every request, {num_shared_tokens} tokens "
                              "(served from vLLM's prefix cache after the first chunk) ---", prompt, "---"]))

    def chunk(self, number: int, num_chunks: int, label: str, context: list[str], sources: list[str],
              record: ChunkRecord, max_tokens: int, how: str = "") -> None:
        lines = [f"--- chunk {number}/{num_chunks} ({label}) ---"]
        if context:
            lines.append("context (not translated): " + " / ".join(context))
        for i, (ja, zh) in enumerate(zip(sources, record.translations), start=1):
            lines += [f"[{i}] source:      {ja}", f"[{i}] translation: {zh}"]
        lines.append(f"tokens: prompt {record.num_prompt_tokens}, output {record.num_output_tokens} "
                     f"(max_tokens {max_tokens}); latency {record.latency_s:.2f} s, TTFT {record.ttft_s:.2f} s; "
                     f"attempts {record.num_attempts}{how}")
        lines += [f"rejected attempt: {p}" for p in record.problems]
        self.write("\n".join(lines))

    def failed_chunk(self, number: int, num_chunks: int, label: str, sources: list[str], attempts: list[Any],
                     reason: str) -> None:
        lines = [f"--- chunk {number}/{num_chunks} ({label}) FAILED: {reason}"]
        lines += [f"[{i}] source: {ja}" for i, ja in enumerate(sources, start=1)]
        for attempt in attempts:
            text = attempt.text if len(attempt.text) <= 300 else attempt.text[:300] + f"... ({len(attempt.text)} chars)"
            lines.append(f"attempt {attempt.number + 1} {attempt.sampling} answer ({attempt.num_output_tokens} "
                         f"tokens, finish_reason {attempt.finish_reason}): {text!r}")
        self.write("\n".join(lines))


FRESH_MARK = ".emptied-before-each-run"  # marks a folder that `fresh_out_dir` may empty again


def fresh_out_dir(path: Path) -> Path | None:
    """Make `path` an empty output folder, for runs that must translate everything (measurements).

    Why: a rerun into a folder with journals skips every finished chunk (that is what resuming
    means), so a measurement must start from an empty folder to measure the same work each time.
    Rule: a folder this function made carries a marker and is emptied; any other non-empty folder
    is moved aside, not deleted, since it may hold someone's finished translations (test:
    tests/test_capstone_translation_parts.py::test_fresh_out_dir_empties_its_own_folder_and_moves_anything_else_aside).

    Args:
        path: the folder (created if missing).

    Returns:
        Where earlier unmarked contents were moved, or None.

    Raises:
        NotADirectoryError: `path` is a file.
    """
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; give an output folder path for the measurement")
    moved = None
    if (path / FRESH_MARK).exists():
        shutil.rmtree(path)
    elif path.is_dir() and any(path.iterdir()):
        moved = path.with_name(f"{path.name}.moved-{time.strftime('%Y%m%d-%H%M%S')}")
        path.rename(moved)
    path.mkdir(parents=True, exist_ok=True)
    (path / FRESH_MARK).write_text("labs.capstone_translation.outputs.fresh_out_dir empties this folder before each run\n")
    return moved
