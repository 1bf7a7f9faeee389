"""A document's memory of names and terms: learned from finished chunks, pinned in later prompts.

Why: chunks are translated independently, so a name or term the glossary does not list can come
out differently in different chunks. With `--term-memory`, once finished chunks agree on how a
term is rendered, the term joins the glossary of the chunks that start afterwards, through the
same mechanism as the user's glossary (`PromptTemplate.glossary`), after the user's terms so the
shared prefix the prefix cache serves stays the longest it can be.

How a term is learned, without asking the model anything (a small model cannot translate a word
out of context, and a large one costs a request per term):
  1. candidates in the Japanese: katakana words, a name before an honorific (田中さん -> 田中),
     and 「quoted」 terms;
  2. a candidate is learned once at least `MIN_CHUNKS` finished chunks contain it, and some Chinese
     string (2-8 characters) occurs in every one of their translations and in none of the other
     chunks' translations; the longest such string, trimmed of particles, is its rendering.

Which chunks a chunk learns from is fixed by the plan, not by timing: the chunks run in waves of
`concurrency`, and a chunk's prompt holds what the earlier waves taught. A resumed run therefore
sends each chunk the same prompt as an uninterrupted run, and greedy answers stay equal.

The consistency report (in every document's log, memory or not) counts, for each glossary or
learned term, the chunks whose source holds it and whose translation holds its rendering.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from labs.core.models.prompt_format import PromptTemplate

if TYPE_CHECKING:
    from labs.capstone_translation.journal import ChunkRecord
    from labs.capstone_translation.plan import DocumentPlan

MIN_CHUNKS = 2  # one chunk cannot tell a term's rendering from the rest of its sentence
MIN_LEN, MAX_LEN = 2, 8  # rendering length in characters: names and terms, not phrases
HONORIFICS = ("さん", "様", "先生", "君", "ちゃん", "氏")
_KATAKANA = re.compile(r"[ァ-ヴー・]{2,}")
_NAME = re.compile(r"([一-龯々ァ-ヴー]{1,4})(?:" + "|".join(HONORIFICS) + ")")
_QUOTED = re.compile(r"「([^「」]{1,10})」")
_CJK = re.compile(r"[一-鿿]")
_TRIM = "的了是在和把被与及、，。！？：；“”「」（）() "  # particles and punctuation at a rendering's ends


def candidate_terms(text: str) -> list[str]:
    """Names and terms in Japanese `text` that a glossary could pin, in order of appearance.

    Args:
        text: Japanese source text (a chunk or a whole document).

    Returns:
        Katakana words, names before an honorific (without it), and 「quoted」 terms; each once.
    """
    found = [m.group(0).strip("・") for m in _KATAKANA.finditer(text)]
    found += [m.group(1) for m in _NAME.finditer(text)]
    found += [m.group(1) for m in _QUOTED.finditer(text)]
    return list(dict.fromkeys(t for t in found if len(t) >= 2))


def rendering(positives: list[str], negatives: list[str]) -> str | None:
    """The longest Chinese string in every translation of `positives` and in none of `negatives`.

    Args:
        positives: translations of the chunks whose source holds the term.
        negatives: translations of the other finished chunks.

    Returns:
        The rendering, trimmed of particles and punctuation, or None when nothing qualifies.
    """
    shortest = min(positives, key=len)
    for length in range(min(MAX_LEN, len(shortest)), MIN_LEN - 1, -1):
        options = sorted({shortest[i:i + length] for i in range(len(shortest) - length + 1)})
        for option in options:
            trimmed = option.strip(_TRIM)
            if (len(trimmed) >= MIN_LEN and _CJK.search(trimmed) and all(trimmed in p for p in positives)
                    and not any(trimmed in n for n in negatives)):
                return trimmed
    return None


def learn_terms(pairs: list[tuple[str, str]], known: set[str]) -> dict[str, str]:
    """Terms (Japanese -> Chinese) that finished chunks agree on.

    Args:
        pairs: (source text, translation) of each finished chunk, in chunk order.
        known: Japanese terms already pinned (the user's glossary): never relearned.

    Returns:
        Learned terms, in order of first appearance.
    """
    learned: dict[str, str] = {}
    for term in candidate_terms("\n".join(source for source, _ in pairs)):
        if any(term in k for k in known):
            continue  # part of a glossary term (エンジン in 推論エンジン): the glossary already decides it
        positives = [zh for ja, zh in pairs if term in ja]
        if len(positives) < MIN_CHUNKS:
            continue
        found = rendering(positives, [zh for ja, zh in pairs if term not in ja])
        if found is not None:
            learned[term] = found
    return learned


def wave_of(chunk_index: int, concurrency: int) -> int:
    """The wave a chunk runs in: it learns from chunks of earlier waves only."""
    return chunk_index // max(1, concurrency)


@dataclass(frozen=True)
class ConsistencyRow:
    term: str
    rendering: str
    origin: str  # "glossary" or "learned"
    chunk_numbers: tuple[int, ...]  # 1-based: chunks whose source holds the term
    inconsistent: tuple[int, ...]  # of those, the chunks whose translation lacks the rendering

    @property
    def num_consistent(self) -> int:
        return len(self.chunk_numbers) - len(self.inconsistent)


def consistency(pairs: dict[int, tuple[str, str]], glossary: dict[str, str], learned: dict[str, str]) -> list[ConsistencyRow]:
    """For each term, the finished chunks that hold it and those whose translation does not follow it.

    Args:
        pairs: chunk index -> (source text, translation) of every finished chunk.
        glossary / learned: the user's terms and the memory's (Japanese -> Chinese).
    """
    rows = []
    for origin, terms in (("glossary", glossary), ("learned", learned)):
        for ja, zh in terms.items():
            holding = sorted(i for i, (src, _) in pairs.items() if ja in src)
            if holding:
                rows.append(ConsistencyRow(ja, zh, origin, tuple(i + 1 for i in holding),
                                           tuple(i + 1 for i in holding if zh not in pairs[i][1])))
    return rows


def format_consistency(rows: list[ConsistencyRow]) -> str:
    """The log's report: one line per term; inconsistent chunks named."""
    if not rows:
        return "=== consistency: no glossary or learned term occurs in this document ==="
    lines = [f"=== consistency: {sum(not r.inconsistent for r in rows)} of {len(rows)} terms rendered the same "
             "in every chunk that holds them ==="]
    for r in rows:
        verdict = "consistent" if not r.inconsistent else f"NOT in chunk(s) {', '.join(map(str, r.inconsistent))}"
        lines.append(f"{r.origin:<8} {r.term} = {r.rendering}: {r.num_consistent}/{len(r.chunk_numbers)} chunks; {verdict}")
    return "\n".join(lines)


# --- the pipeline's side ---------------------------------------------------------------------------

def chunk_pairs(plan: DocumentPlan, records: dict[int, ChunkRecord]) -> dict[int, tuple[str, str]]:
    """chunk index -> (its source text, its translation) for every finished chunk."""
    return {i: ("".join(s.text for s in plan.segments[plan.chunks[i].start:plan.chunks[i].end]),
                "".join(r.translations)) for i, r in sorted(records.items())}


def template_for_wave(plan: DocumentPlan, records: dict[int, ChunkRecord], wave: int,
                      concurrency: int) -> tuple[PromptTemplate, dict[str, str]]:
    """The prompt template of wave `wave`'s chunks: the user's glossary plus what earlier waves taught.

    Returns:
        (template, the learned terms it adds), the terms after the user's glossary.
    """
    earlier = {i: r for i, r in records.items() if wave_of(i, concurrency) < wave}
    known = {ja for ja, _ in plan.template.glossary}
    learned = learn_terms(list(chunk_pairs(plan, earlier).values()), known)
    return replace(plan.template, glossary=plan.template.glossary + tuple(learned.items())), learned


def report(plan: DocumentPlan, records: dict[int, ChunkRecord], memory: bool) -> str:
    """The consistency report of a finished (or partial) document: its glossary and learned terms."""
    pairs = chunk_pairs(plan, records)
    learned = learn_terms(list(pairs.values()), {ja for ja, _ in plan.template.glossary}) if memory else {}
    return format_consistency(consistency(pairs, dict(plan.template.glossary), learned))
