"""Reading the Japanese input: which files, which encoding, which paragraphs.

Japanese text files are often not UTF-8 (Shift_JIS / CP932 from Windows, EUC-JP from older Unix
tools). Decoding them as UTF-8 with errors="replace" would translate mojibake without a word of
warning, so a file is decoded strictly: UTF-8 first, then the Japanese legacy encodings, and the
choice is reported. When nothing decodes cleanly the error says so and how to pass `--encoding`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from labs.core.errors import WorkbookError

TEXT_SUFFIXES = (".txt", ".md")
# CP932 is Microsoft's Shift_JIS (a superset: NEC/IBM extensions, the common "Shift_JIS" in practice).
LEGACY_JAPANESE_ENCODINGS = ("cp932", "euc_jp", "iso2022_jp")
# What natural Japanese text is made of: kana, kanji, CJK and full-width punctuation, ASCII.
# Half-width katakana (U+FF61-FF9F) and private-use characters are what a WRONG legacy decoding
# produces (EUC-JP bytes read as CP932 come out exactly like that), so they do not count.
_NATURAL = re.compile(r"[\u3000-\u30ff\u3400-\u9fff\uff01-\uff5e\u0020-\u007e\s]")
MIN_NATURAL_RATIO = 0.95  # below this, a decoding is a guess: refuse rather than translate mojibake
_BLANK_LINES = re.compile(r"\n\s*\n")


class InputError(WorkbookError):
    """An input file that cannot be translated as it is (empty, undecodable, missing)."""


@dataclass(frozen=True)
class SourceDocument:
    """One input file, decoded and split.

    Attributes:
        path: where it was read from.
        name: output base name (`<name>_zh.txt`), unique within one run.
        encoding: how it was decoded ("utf-8", "cp932", ...).
        paragraphs: non-empty paragraphs, in order (blank lines separate paragraphs).
    """

    path: Path
    name: str
    encoding: str
    paragraphs: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(self.paragraphs)


def find_inputs(inputs: list[Path]) -> list[Path]:
    """Files named directly, plus the .txt/.md files under named folders (sorted, recursive).

    Raises:
        InputError: a path does not exist, or a folder holds no text files.
    """
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            if not found:
                raise InputError(f"{path}: no {'/'.join(TEXT_SUFFIXES)} files in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    return list(dict.fromkeys(files))  # a file named twice is translated once


def natural_ratio(text: str) -> float:
    """Share of characters that natural Japanese text is made of (see `_NATURAL`)."""
    return sum(bool(_NATURAL.match(c)) for c in text) / len(text) if text else 0.0


def decode(data: bytes, path: Path, encoding: str | None = None) -> tuple[str, str]:
    """Decode `data` strictly; returns (text, encoding used).

    Args:
        data: the file's bytes.
        path: for messages only.
        encoding: force this encoding (`--encoding`); None tries UTF-8, then the Japanese
            legacy encodings, and keeps the one whose text looks most like natural Japanese
            (several may decode without error: EUC-JP bytes are valid CP932, as gibberish).

    Raises:
        InputError: the forced encoding fails, or no candidate decodes the file.
    """
    if encoding:
        try:
            return data.decode(encoding), encoding
        except (UnicodeDecodeError, LookupError) as exc:
            raise InputError(f"{path}: cannot be read as {encoding} ({exc}). Check --encoding.") from exc
    try:
        return data.decode("utf-8-sig"), "utf-8"  # utf-8-sig: drop a BOM if Notepad wrote one
    except UnicodeDecodeError as exc:
        utf8_error = exc
    decoded: list[tuple[float, str, str]] = []
    for candidate in LEGACY_JAPANESE_ENCODINGS:
        try:
            text = data.decode(candidate)
        except UnicodeDecodeError:
            continue
        decoded.append((natural_ratio(text), candidate, text))
    if decoded:
        score, candidate, text = max(decoded)
        if score >= MIN_NATURAL_RATIO:
            return text, candidate
    raise InputError(
        f"{path}: not UTF-8 ({utf8_error.reason} at byte {utf8_error.start}) and not readable as "
        f"{', '.join(LEGACY_JAPANESE_ENCODINGS)} either. Convert it to UTF-8 "
        f"(iconv -f SHIFT_JIS -t UTF-8) or pass --encoding NAME.")


def split_paragraphs(text: str) -> tuple[str, ...]:
    """The text's paragraphs, in order, without empty ones.

    Two conventions exist for Japanese plain text and both are read as their authors meant:
    with blank lines between paragraphs, a paragraph's own line breaks are hard wraps and its
    lines are joined with no separator (Japanese puts no spaces between words); without any
    blank line, every line is a paragraph (the usual one-line-per-paragraph style).
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if _BLANK_LINES.search(text):
        blocks = ("".join(line.strip() for line in block.split("\n")) for block in _BLANK_LINES.split(text))
    else:
        blocks = (line.strip() for line in text.split("\n"))
    return tuple(p for p in blocks if p)


def read_document(path: Path, name: str | None = None, encoding: str | None = None) -> SourceDocument:
    """Read and split one input file.

    Raises:
        InputError: empty (or whitespace-only) file, or an encoding problem (see `decode`).
    """
    data = path.read_bytes()
    text, used = decode(data, path, encoding)
    paragraphs = split_paragraphs(text)
    if not paragraphs:
        raise InputError(f"{path}: the file is empty; there is nothing to translate.")
    return SourceDocument(path, name or path.stem, used, paragraphs)


def output_names(paths: list[Path]) -> list[str]:
    """A unique output name per input: the file's stem, prefixed by its folder when stems clash."""
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}_{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
