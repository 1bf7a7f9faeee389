"""Token-aware chunking on paragraph boundaries, with overlap, sized from the server's context.

A request must hold the shared prompt, the overlap context, the chunk, AND the chunk's
translation within the server's `max_model_len`. The planner therefore budgets source tokens
per chunk from the context length (read from the server) and a conservative estimate of how
many output tokens a source token turns into; the real `max_tokens` of each request is then
whatever the context has left once the exact prompt length is known.

The two budget rules (`source_budget`, `plan_chunks`) are the capstone's exercise: the reference
is solution.py, yours exercise.py, and `chunker()` picks which one the pipeline runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from labs.core.errors import WorkbookError
from labs.core.grading import engine_part

_SENTENCE_END = re.compile(r"(?<=[。！？!?])")
CHUNKING_EXERCISE = "capstone_chunking"  # its name in labs.core.grading.EXERCISES


class ContextTooSmallError(WorkbookError):
    """The shared prompt leaves no room for text in the server's context."""


@dataclass(frozen=True)
class Segment:
    """A unit the planner never splits: a paragraph, or a sentence run of an over-long paragraph.

    Attributes:
        paragraph_index: the source paragraph it belongs to (translations are rejoined per paragraph).
        text: the Japanese text.
        num_tokens: its length in the server's tokens.
    """

    paragraph_index: int
    text: str
    num_tokens: int


@dataclass(frozen=True)
class Chunk:
    """One request's worth of segments: `segments[start:end]`, after context `segments[context_start:start]`."""

    index: int
    start: int
    end: int
    context_start: int


@dataclass(frozen=True)
class ChunkBudget:
    """How many tokens a chunk and its overlap context may hold, and why.

    Attributes:
        max_model_len: the server's context length (prompt + output).
        num_shared_tokens: the shared prompt (system + few-shot), chat template included.
        max_source_tokens: source tokens per chunk (the smaller of the user's cap and what fits).
        max_context_tokens: overlap context per chunk (whole segments only; fewer if they do not fit).
        whole_document: the whole document fits in one request (no chunking, no context needed).
    """

    max_model_len: int
    num_shared_tokens: int
    max_source_tokens: int
    max_context_tokens: int
    whole_document: bool


def chunker() -> ModuleType:
    """The module whose `source_budget` and `plan_chunks` the pipeline runs.

    Why a switch: they are the capstone's exercise (labs/capstone_translation/exercise.py). The
    pipeline runs the reference (solution.py) unless you opt in with `LABS_ENGINE=learner` (or a
    module path), the same switch that builds the mini engine from your Lab 2-4 answers
    (`labs.core.grading.engine_part`); `make grade LAB=capstone` sets it for its vLLM check only.

    Returns:
        labs.capstone_translation.solution, or the module $LABS_ENGINE names.
    """
    return engine_part(CHUNKING_EXERCISE)


def source_budget(max_model_len: int, num_shared_tokens: int, num_document_tokens: int, *,
                  max_chunk_tokens: int | None, output_ratio: float, overlap: int,
                  whole_document_allowed: bool = True, per_request_overhead: int = 16) -> ChunkBudget:
    """Source and context tokens per chunk, so that each request's prompt + output fits `max_model_len`.

    See labs/capstone_translation/solution.py (the reference) for the rule and its arguments;
    this runs `chunker()`'s.
    """
    return chunker().source_budget(max_model_len, num_shared_tokens, num_document_tokens,
                                   max_chunk_tokens=max_chunk_tokens, output_ratio=output_ratio, overlap=overlap,
                                   whole_document_allowed=whole_document_allowed,
                                   per_request_overhead=per_request_overhead)


def split_sentences(text: str) -> list[str]:
    """`text` cut after each sentence end (。！？!?); text without one is a single sentence.

    Args:
        text: a paragraph or segment.

    Returns:
        Its sentences, in order, each with its end mark; blank pieces are dropped, and `text`
        itself when nothing else is left.
    """
    return [s for s in _SENTENCE_END.split(text) if s.strip()] or [text]


def make_segments(paragraphs: tuple[str, ...], count_tokens: Callable[[str], int], max_tokens: int) -> list[Segment]:
    """Paragraphs as segments; a paragraph longer than `max_tokens` is cut at sentence ends.

    Why sentences: a paragraph boundary is the best cut (no sentence is split from its context);
    a paragraph too long for any chunk is cut at the next best place. A single sentence longer
    than the budget stays whole: the request is then larger than planned, but still correct.
    """
    segments: list[Segment] = []
    for index, paragraph in enumerate(paragraphs):
        num_tokens = count_tokens(paragraph)
        if num_tokens <= max_tokens:
            segments.append(Segment(index, paragraph, num_tokens))
            continue
        run: list[str] = []
        for sentence in (s for s in _SENTENCE_END.split(paragraph) if s):
            if run and count_tokens("".join(run + [sentence])) > max_tokens:
                segments.append(Segment(index, "".join(run), count_tokens("".join(run))))
                run = []
            run.append(sentence)
        segments.append(Segment(index, "".join(run), count_tokens("".join(run))))
    return segments


def plan_chunks(segments: list[Segment], budget: ChunkBudget, overlap: int,
                max_paragraphs: int | None = None) -> list[Chunk]:
    """Whole segments packed into chunks within `budget`, each with up to `overlap` segments of context.

    See labs/capstone_translation/solution.py (the reference); this runs `chunker()`'s.
    """
    return chunker().plan_chunks(segments, budget, overlap, max_paragraphs)
