"""A deliberately wrong capstone chunker: the grader must fail it (see test_capstone_translation.py)."""

from __future__ import annotations

from labs.capstone_translation.chunking import Chunk, ChunkBudget, ContextTooSmallError, Segment


def source_budget(max_model_len: int, num_shared_tokens: int, num_document_tokens: int, *,
                  max_chunk_tokens: int | None, output_ratio: float, overlap: int,
                  whole_document_allowed: bool = True, per_request_overhead: int = 16) -> ChunkBudget:
    # Classic mistake: the prompt is budgeted, the output is not ("max_tokens gets whatever is left").
    free = max_model_len - num_shared_tokens - per_request_overhead
    if (whole_document_allowed and free >= num_document_tokens
            and (max_chunk_tokens is None or num_document_tokens <= max_chunk_tokens)):
        return ChunkBudget(max_model_len, num_shared_tokens, num_document_tokens, 0, True)
    context_share = 0.5 if overlap else 0.0
    fits = int(free / (1 + context_share))
    if fits < 8:
        raise ContextTooSmallError(f"context {max_model_len} too small")
    cap = fits if max_chunk_tokens is None else min(fits, max_chunk_tokens)
    return ChunkBudget(max_model_len, num_shared_tokens, cap, int(cap * context_share), False)


def plan_chunks(segments: list[Segment], budget: ChunkBudget, overlap: int,
                max_paragraphs: int | None = None) -> list[Chunk]:
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
        # Classic mistake: an off-by-one in the context walk (<=): one segment more than `overlap`.
        while (start - context_start <= overlap and context_start > 0
               and context_tokens + segments[context_start - 1].num_tokens <= budget.max_context_tokens):
            context_start -= 1
            context_tokens += segments[context_start].num_tokens
        chunks.append(Chunk(len(chunks), start, end, context_start))
        start = end
    return chunks
