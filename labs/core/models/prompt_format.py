"""The capstone's prompt: a shared part (preface, glossary, few-shot example) then one chunk.

Why this layout: every chunk of a document sends the same system message and example turns
first, byte for byte, so vLLM's prefix cache computes them once and serves them from cached KV
blocks for every later chunk. Only the final user turn (optional context + the numbered
paragraphs) differs. Paragraphs are numbered `[n]` so the answer can be split back into
paragraphs, checked for missing ones, and aligned with the source in the bilingual output.

`tiny-phrasebook` is trained on exactly these messages built from the default files in
`labs/core/models/data/` (see labs/core/models/build.py), so the offline model follows this format.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

DATA_DIR = Path(__file__).with_name("data")
DEFAULT_PREFACE_PATH = DATA_DIR / "preface.txt"
DEFAULT_GLOSSARY_PATH = DATA_DIR / "glossary.tsv"
DEFAULT_EXAMPLES_PATH = DATA_DIR / "examples.tsv"

_MARKER = re.compile(r"^\s*\[(\d+)\]\s?", re.MULTILINE)
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)


class OutputFormatError(ValueError):
    """The model's answer cannot be split into the paragraphs that were asked for."""


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    """Rows of a two-column TSV with a `ja<TAB>zh` header (glossary and examples files)."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if rows and not {"ja", "zh"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a tab-separated file with a 'ja<TAB>zh' header")
    return [(r["ja"].strip(), r["zh"].strip()) for r in rows if r["ja"] and r["zh"]]


@dataclass(frozen=True)
class PromptTemplate:
    """Everything that is shared by all chunks of a document.

    Args:
        preface: the instruction text (system message).
        glossary: (ja, zh) fixed term translations, injected into the system message.
        examples: (ja, zh) paragraph pairs, sent as one few-shot user/assistant exchange.
    """

    preface: str
    glossary: tuple[tuple[str, str], ...] = ()
    examples: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def load(cls, preface_file: Path | None = None, glossary_file: Path | None = None,
             examples_file: Path | None = None) -> PromptTemplate:
        """The template from files; each argument left out takes the workbook's default file."""
        preface = (preface_file or DEFAULT_PREFACE_PATH).read_text(encoding="utf-8").strip()
        glossary = _read_pairs(glossary_file or DEFAULT_GLOSSARY_PATH)
        examples = _read_pairs(examples_file or DEFAULT_EXAMPLES_PATH)
        return cls(preface, tuple(glossary), tuple(examples))

    def for_document(self, text: str) -> PromptTemplate:
        """Keep only the glossary terms that occur in `text` (in file order).

        Why per document, not per chunk: the glossary is part of the shared prefix; filtering it
        per chunk would make every chunk's prefix different and defeat the prefix cache.
        """
        return replace(self, glossary=tuple((ja, zh) for ja, zh in self.glossary if ja in text))

    def system_message(self) -> str:
        parts = [self.preface]
        if self.glossary:
            parts.append("Glossary (Japanese = Chinese):\n" + "\n".join(f"{ja} = {zh}" for ja, zh in self.glossary))
        return "\n\n".join(parts)

    def shared_messages(self) -> list[dict[str, str]]:
        """The messages every chunk starts with (the prefix vLLM caches)."""
        messages = [{"role": "system", "content": self.system_message()}]
        if self.examples:
            messages.append({"role": "user", "content": number_paragraphs([ja for ja, _ in self.examples])})
            messages.append({"role": "assistant", "content": number_paragraphs([zh for _, zh in self.examples])})
        return messages

    def chunk_messages(self, paragraphs: list[str], context: list[str] | None = None) -> list[dict[str, str]]:
        """The full request for one chunk.

        Args:
            paragraphs: the source paragraphs to translate, numbered [1]..[n] in the request.
            context: the previous chunk's last paragraphs (the overlap), shown for continuity
                and marked as not to be translated.
        """
        body = number_paragraphs(paragraphs)
        if context:
            body = "Context:\n" + "\n".join(context) + "\n\nTranslate:\n" + body
        return [*self.shared_messages(), {"role": "user", "content": body}]


def number_paragraphs(paragraphs: list[str]) -> str:
    return "\n".join(f"[{i}] {p}" for i, p in enumerate(paragraphs, start=1))


def strip_reasoning(text: str) -> str:
    """Drop `<think>...</think>` blocks (reasoning models emit them before the answer)."""
    return _THINK.sub("", text).strip()


def parse_numbered(text: str, num_paragraphs: int) -> list[str]:
    """Split an answer into exactly `num_paragraphs` paragraphs by their [n] markers.

    Raises:
        OutputFormatError: a marker is missing, repeated or out of order, or text precedes [1].
    """
    text = strip_reasoning(text)
    if num_paragraphs == 1 and not _MARKER.match(text):
        return [text.strip()]  # a lone paragraph answered without its marker is still unambiguous
    matches = list(_MARKER.finditer(text))
    numbers = [int(m.group(1)) for m in matches]
    if numbers != list(range(1, num_paragraphs + 1)):
        raise OutputFormatError(f"expected markers [1]..[{num_paragraphs}], got {numbers or 'none'}")
    if text[:matches[0].start()].strip():
        raise OutputFormatError("text before [1]")
    ends = [m.start() for m in matches[1:]] + [len(text)]
    return [text[m.end():end].strip() for m, end in zip(matches, ends)]
