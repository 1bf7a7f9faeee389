"""What a finished document leaves behind: the translation, a bilingual view, and its log.

- `<name>_zh.txt`: the translation only (paragraphs separated by blank lines), for downstream use;
- `<name>_bilingual.md`: source and translation side by side, paragraph by paragraph, for review;
- `logs/<name>.log`: the shared prompt once, then every chunk's source, translation, tokens,
  latency and retries, appended run after run (a resumed job shows both runs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labs.translate.journal import ChunkRecord, atomic_write_text


@dataclass(frozen=True)
class OutputPaths:
    translation: Path
    bilingual: Path
    log: Path
    journal: Path

    @classmethod
    def for_document(cls, out_dir: Path, name: str) -> OutputPaths:
        return cls(out_dir / f"{name}_zh.txt", out_dir / f"{name}_bilingual.md",
                   out_dir / "logs" / f"{name}.log", out_dir / ".journal" / f"{name}.jsonl")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def bilingual_markdown(title: str, sources: list[str], translations: list[str]) -> str:
    rows = [f"| {i} | {_cell(ja)} | {_cell(zh)} |" for i, (ja, zh) in enumerate(zip(sources, translations), start=1)]
    return "\n".join([f"# {title}", "", "| # | 日本語 | 中文 |", "|---:|---|---|", *rows, ""])


def write_outputs(paths: OutputPaths, title: str, sources: list[str], translations: list[str]) -> None:
    """Write both outputs atomically (a killed run never leaves half a file behind)."""
    atomic_write_text(paths.translation, "\n\n".join(translations) + "\n")
    atomic_write_text(paths.bilingual, bilingual_markdown(title, sources, translations))


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
              record: ChunkRecord, max_tokens: int) -> None:
        lines = [f"--- chunk {number}/{num_chunks} ({label}) ---"]
        if context:
            lines.append("context (not translated): " + " / ".join(context))
        for i, (ja, zh) in enumerate(zip(sources, record.translations), start=1):
            lines += [f"[{i}] source:      {ja}", f"[{i}] translation: {zh}"]
        lines.append(f"tokens: prompt {record.num_prompt_tokens}, output {record.num_output_tokens} "
                     f"(max_tokens {max_tokens}); latency {record.latency_s:.2f} s, TTFT {record.ttft_s:.2f} s; "
                     f"attempts {record.num_attempts}")
        lines += [f"rejected attempt: {p}" for p in record.problems]
        self.write("\n".join(lines))

    def failed_chunk(self, number: int, num_chunks: int, label: str, sources: list[str], attempts: list[Any],
                     reason: str) -> None:
        lines = [f"--- chunk {number}/{num_chunks} ({label}) FAILED: {reason}"]
        lines += [f"[{i}] source: {ja}" for i, ja in enumerate(sources, start=1)]
        for i, attempt in enumerate(attempts, start=1):
            text = attempt.text if len(attempt.text) <= 300 else attempt.text[:300] + f"... ({len(attempt.text)} chars)"
            lines.append(f"attempt {i} answer ({attempt.num_output_tokens} tokens, finish_reason "
                         f"{attempt.finish_reason}): {text!r}")
        self.write("\n".join(lines))
