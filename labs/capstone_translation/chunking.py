"""Token-aware chunking on paragraph boundaries, with overlap, sized from the server's context.

A request must hold the shared prompt, the overlap context, the chunk, AND the chunk's
translation within the server's `max_model_len`. The planner therefore budgets source tokens
per chunk from the context length (read from the server) and a conservative estimate of how
many output tokens a source token turns into; the real `max_tokens` of each request is then
whatever the context has left once the exact prompt length is known.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from labs.core.errors import WorkbookError

_SENTENCE_END = re.compile(r"(?<=[。！？!?])")


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


def source_budget(max_model_len: int, num_shared_tokens: int, num_document_tokens: int, *,
                  max_chunk_tokens: int | None, output_ratio: float, overlap: int,
                  whole_document_allowed: bool = True, per_request_overhead: int = 16) -> ChunkBudget:
    """Source tokens per chunk.

    A request holds shared prompt + context + source + output, and output ~ output_ratio x source.
    The context (overlap) costs its tokens once, with no output; it is given up to half as many
    tokens as the source, so a chunk's own text always dominates its request.

    Args:
        max_model_len: from the server's `/v1/models`, not guessed from the model's name.
        num_shared_tokens: tokens of the shared prompt.
        num_document_tokens: tokens of the whole document's text.
        max_chunk_tokens: the user's cap (smaller chunks: more concurrency, shorter outputs);
            None: as large as the context allows.
        output_ratio: output tokens per source token to reserve (JA->ZH is usually below 1.5).
        overlap: segments of context per chunk (0: none).
        whole_document_allowed: False when another limit (paragraphs per chunk) forces chunks.
        per_request_overhead: chat-template tokens around the user turn and the [n] markers.

    Raises:
        ContextTooSmallError: the shared prompt alone nearly fills the context.
    """
    free = max_model_len - num_shared_tokens - per_request_overhead
    whole_fits = int(free / (1 + output_ratio))
    if (whole_document_allowed and whole_fits >= num_document_tokens
            and (max_chunk_tokens is None or num_document_tokens <= max_chunk_tokens)):
        return ChunkBudget(max_model_len, num_shared_tokens, num_document_tokens, 0, True)
    context_share = 0.5 if overlap else 0.0
    fits = int(free / (1 + output_ratio + context_share))
    if fits < 8:
        raise ContextTooSmallError(
            f"The server's context ({max_model_len} tokens) is too small: the shared prompt (preface, "
            f"glossary, examples) takes {num_shared_tokens} tokens. Use a shorter preface/glossary or a "
            "server with a longer --max-model-len.")
    cap = fits if max_chunk_tokens is None else min(fits, max_chunk_tokens)
    return ChunkBudget(max_model_len, num_shared_tokens, cap, int(cap * context_share), False)


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
    """Greedy packing of whole segments into chunks of at most `budget.max_source_tokens`.

    Args:
        segments: the document, in order.
        budget: see `source_budget`.
        overlap: up to this many segments before each chunk (after the first) are sent as
            context, as long as they fit in `budget.max_context_tokens`.
        max_paragraphs: at most this many segments per chunk (None: tokens decide alone).
    """
    if budget.whole_document:
        return [Chunk(0, 0, len(segments), 0)]
    chunks: list[Chunk] = []
    start = 0
    while start < len(segments):
        end, total = start, 0
        while end < len(segments) and (end == start or (
                total + segments[end].num_tokens <= budget.max_source_tokens
                and (max_paragraphs is None or end - start < max_paragraphs))):
            total += segments[end].num_tokens
            end += 1
        context_start, context_tokens = start, 0
        while (start - context_start < overlap and context_start > 0
               and context_tokens + segments[context_start - 1].num_tokens <= budget.max_context_tokens):
            context_start -= 1
            context_tokens += segments[context_start].num_tokens
        chunks.append(Chunk(len(chunks), start, end, context_start))
        start = end
    return chunks
