"""A deliberately wrong capstone chunker: the grader must fail it (see test_capstone_translation.py).

Each mistake is the reference with one knob turned, so the file states the mistake and nothing else.
"""

from __future__ import annotations

from labs.capstone_translation import solution
from labs.capstone_translation.chunking import Chunk, ChunkBudget, Segment


def source_budget(max_model_len: int, num_shared_tokens: int, num_document_tokens: int, *,
                  max_chunk_tokens: int | None, output_ratio: float, overlap: int,
                  whole_document_allowed: bool = True, per_request_overhead: int = 16) -> ChunkBudget:
    # Classic mistake: the prompt is budgeted, the output is not ("max_tokens gets whatever is left").
    return solution.source_budget(max_model_len, num_shared_tokens, num_document_tokens,
                                  max_chunk_tokens=max_chunk_tokens, output_ratio=0.0, overlap=overlap,
                                  whole_document_allowed=whole_document_allowed,
                                  per_request_overhead=per_request_overhead)


def plan_chunks(segments: list[Segment], budget: ChunkBudget, overlap: int,
                max_paragraphs: int | None = None) -> list[Chunk]:
    # Classic mistake: an off-by-one in the context walk (`<= overlap` for `< overlap`): one segment
    # of context more than `overlap`; overlap only bounds that walk, so this is overlap + 1.
    return solution.plan_chunks(segments, budget, overlap + 1, max_paragraphs)
