"""The capstone's reference chunker: how much source text a request may carry, and which segments.

The pipeline (labs.capstone_translation.chunking, through labs.core.grading.engine_part) uses
these unless a learner opts into theirs (`LABS_ENGINE=learner`); `make grade LAB=capstone` grades
labs/capstone_translation/exercise.py against them and against a real vLLM server.
"""

from __future__ import annotations

from labs.capstone_translation.chunking import Chunk, ChunkBudget, ContextTooSmallError, Segment

MIN_SOURCE_TOKENS = 8  # fewer source tokens per request than this: the shared prompt is the whole request


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

    Returns:
        The budget (`ChunkBudget.whole_document` when the document fits in one request).

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
    if fits < MIN_SOURCE_TOKENS:
        raise ContextTooSmallError(
            f"The server's context ({max_model_len} tokens) is too small: the shared prompt (preface, "
            f"glossary, examples) takes {num_shared_tokens} tokens. Use a shorter preface/glossary or a "
            "server with a longer --max-model-len.")
    cap = fits if max_chunk_tokens is None else min(fits, max_chunk_tokens)
    return ChunkBudget(max_model_len, num_shared_tokens, cap, int(cap * context_share), False)


def plan_chunks(segments: list[Segment], budget: ChunkBudget, overlap: int,
                max_paragraphs: int | None = None) -> list[Chunk]:
    """Greedy packing of whole segments into chunks of at most `budget.max_source_tokens`.

    Args:
        segments: the document, in order.
        budget: see `source_budget`.
        overlap: up to this many segments before each chunk (after the first) are sent as
            context, as long as they fit in `budget.max_context_tokens`.
        max_paragraphs: at most this many segments per chunk (None: tokens decide alone).

    Returns:
        The chunks, in order, covering every segment once.
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
