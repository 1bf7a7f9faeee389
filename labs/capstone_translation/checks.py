"""Is a chunk's answer a usable translation? The checks behind "retry with adjusted sampling".

Each check names a failure a real model produces in long jobs: an empty answer, a loop that
repeats a phrase until `max_tokens`, Japanese copied through untranslated, the source echoed,
paragraphs merged or dropped (the [n] markers), or a reply cut off by the length limit.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from labs.core.models.prompt_format import OutputFormatError, parse_numbered

_KANA = re.compile(r"[\u3040-\u309f\u30a0-\u30ff\uff66-\uff9f]")  # hiragana, katakana, half-width katakana
# A 2-40 char unit repeated 5+ times in a row; a run of symbols that the source has as well
# (a "――――――――――" line, "…………") is copied through, not a loop.
_LOOP = re.compile(r"(.{2,40}?)\1{4,}", re.DOTALL)
# A clause of 5+ characters said twice or more in a row ("缓存里的结果。缓存里的结果。"): how a model
# that ran on past the end of its translation usually shows it; correct prose almost never does
# this, unless the source repeats too. Rule (`repeated_phrase`): the translation may repeat text
# as many times as the source repeats text (a sentence the source says twice is translated twice),
# and a run of symbols (――――――――――, ……) as many times as the source has that run; one more
# is a problem. Tested in tests/test_capstone_translation_parts.py::test_checks_catch_what_models_do_wrong.
_REPEATED_CLAUSE = re.compile(r"(.{5,}?)\1+", re.DOTALL)
MAX_KANA_SHARE = 0.1  # Chinese has no kana; a few may survive in names (ソニー) or quoted titles
MAX_LENGTH_RATIO = 4.0  # Chinese output is rarely longer than its Japanese source in characters


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one answer.

    Attributes:
        translations: one per source segment (empty when the format could not be parsed).
        problems: why the answer is not acceptable; empty means it is.
    """

    translations: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def kana_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(bool(_KANA.match(c)) for c in chars) / len(chars) if chars else 0.0


def _is_symbols(unit: str) -> bool:
    return not any(c.isalnum() for c in unit)


def _repeat_counts(text: str) -> tuple[Counter[object], dict[object, str]]:
    """Extra copies of each repeated unit in `text`, keyed "text" for words, by character set for symbols."""
    counts: Counter[object] = Counter()
    units: dict[object, str] = {}
    for match in _REPEATED_CLAUSE.finditer(text):
        unit = match.group(1)
        key = frozenset(unit) if _is_symbols(unit) else "text"
        counts[key] += len(match.group(0)) // len(unit) - 1
        units.setdefault(key, unit)
    return counts, units


def repeated_phrase(source: str, translation: str) -> str | None:
    """A unit the translation repeats more often than the source repeats its counterpart, else None.

    Japanese and Chinese clauses cannot be matched up here, so text is counted as a whole: every
    extra copy of a clause in the translation needs one in the source. Symbol runs (――, ……) are
    copied through, so they are matched by their characters: a dash line in the source excuses
    the same dash line in the translation, not a repeated sentence.

    Args:
        source: the Japanese paragraph.
        translation: its translation.

    Returns:
        The first unit repeated beyond what the source repeats (for the problem message), or None.
    """
    source_counts, _ = _repeat_counts(source)
    counts, units = _repeat_counts(translation)
    return next((units[key] for key in counts if counts[key] > source_counts[key]), None)


def paragraph_problems(source: str, translation: str) -> list[str]:
    """What is wrong with one paragraph's translation (empty list: nothing detected)."""
    if not translation.strip():
        return ["empty translation"]
    problems = []
    if any(not _is_symbols(m.group(1)) or m.group(0) not in source for m in _LOOP.finditer(translation)):
        problems.append("repetition loop")
    elif (unit := repeated_phrase(source, translation)) is not None:
        problems.append(f"repeated phrase {unit!r}")
    if kana_share(translation) > MAX_KANA_SHARE:
        problems.append(f"Japanese left untranslated ({kana_share(translation):.0%} kana)")
    if len(source) >= 8 and source in translation:
        problems.append("source echoed")
    if len(translation) > MAX_LENGTH_RATIO * len(source) + 20:
        problems.append(f"too long ({len(translation)} chars for {len(source)})")
    return problems


def check_answer(text: str, sources: list[str], finish_reason: str | None) -> Verdict:
    """Check a chunk's raw answer against its source segments.

    Args:
        text: the model's reply (reasoning blocks are dropped before parsing).
        sources: the segments that were sent, in order.
        finish_reason: the API's finish reason; "length" means the reply was cut off.
    """
    problems: list[str] = []
    if finish_reason == "length":
        problems.append("cut off at max_tokens (finish_reason=length)")
    try:
        translations = parse_numbered(text, len(sources))
    except OutputFormatError as exc:
        return Verdict((), tuple(problems + [f"paragraph markers: {exc}"]))
    for number, (source, translation) in enumerate(zip(sources, translations), start=1):
        problems += [f"[{number}] {p}" for p in paragraph_problems(source, translation)]
    return Verdict(tuple(translations), tuple(problems))
