"""Capstone exercise: fit every translation request into the server's `max_model_len`.

A vLLM server serves each model with one context length, `max_model_len` (`/v1/models` reports
it; `--max-model-len` sets it). One request's prompt AND its output share it:
  - a prompt longer than `max_model_len` is refused with HTTP 400 "This model's maximum context
    length is N tokens..." (vllm/renderers/params.py, `TokenizeParams._token_len_check`); a prompt
    of exactly `max_model_len` tokens too, as it leaves no room for one output token
    (vllm/sampling_params.py: "max_tokens must be at least 1");
  - the output is cut to what is left: vLLM lowers `max_tokens` to `max_model_len - prompt
    tokens` without a word (vllm/entrypoints/serve/utils/api_utils.py, `get_max_tokens`), so a
    chunk sent with too little room fails quietly: its translation stops at the context's end
    (`finish_reason == "length"`), the pipeline's checks reject it, and every retry is cut the
    same way.
So the pipeline must decide, before it sends anything, how much Japanese one request may carry.
Fill in both functions, then run `make grade LAB=capstone`. The tests
(tests/exercises/test_capstone_translation.py) compare your budgets and plans with the reference
on thousands of generated documents, check rules that need no reference, and send your plan's
largest chunk to a real vLLM server with the `max_tokens` the pipeline gives it. To translate
with your chunker: `LABS_ENGINE=learner make translate`.
"""

from __future__ import annotations

from labs.capstone_translation.chunking import Chunk, ChunkBudget, Segment


def source_budget(max_model_len: int, num_shared_tokens: int, num_document_tokens: int, *,
                  max_chunk_tokens: int | None, output_ratio: float, overlap: int,
                  whole_document_allowed: bool = True, per_request_overhead: int = 16) -> ChunkBudget:
    """How many source tokens (and overlap-context tokens) one request may carry.

    A request holds: the shared prompt (system, glossary, few-shot; `num_shared_tokens`), the
    chat template's tokens around the user turn (`per_request_overhead`), the overlap context,
    the chunk's source text, and then its translation, which you must reserve in advance at
    `output_ratio` output tokens per source token. Let free = max_model_len - num_shared_tokens
    - per_request_overhead. The rules:
      1. The whole document in ONE request (no context needed) when allowed, when
         num_document_tokens <= int(free / (1 + output_ratio)), and when it is within the user's
         cap (`max_chunk_tokens`, if not None). Budget: max_source_tokens = num_document_tokens,
         max_context_tokens = 0, whole_document = True.
      2. Otherwise chunks. With overlap > 0 the context may take up to HALF as many tokens as the
         source (context_share = 0.5; 0 without overlap); it is read, never translated, so it
         reserves no output. fits = int(free / (1 + output_ratio + context_share)).
      3. fits < 8: raise `ContextTooSmallError` (labs.capstone_translation.chunking): the shared
         prompt leaves no useful room; say so instead of sending one-word requests.
      4. max_source_tokens = fits, or the user's cap when smaller; max_context_tokens =
         int(max_source_tokens * context_share); whole_document = False.

    Args:
        max_model_len: the server's context length (prompt + output), from `/v1/models`.
        num_shared_tokens: tokens of the shared prompt, chat template included.
        num_document_tokens: tokens of the whole document's text.
        max_chunk_tokens: the user's cap on source tokens per chunk; None: as large as fits.
        output_ratio: output tokens reserved per source token (1.5 is safe for JA->ZH).
        overlap: segments of context per chunk (0: none).
        whole_document_allowed: False when another limit (paragraphs per chunk) forces chunks.
        per_request_overhead: chat-template tokens around the user turn and the [n] markers.

    Returns:
        A `ChunkBudget(max_model_len, num_shared_tokens, max_source_tokens, max_context_tokens,
        whole_document)`.

    Example: max_model_len 2048, 200 shared tokens, a 5,000-token document, no cap, ratio 1.5,
    overlap 1: free = 1832, the document does not fit whole (1832 / 2.5 = 732), fits =
    int(1832 / 3.0) = 610: ChunkBudget(2048, 200, 610, 305, False).
    Hint: vLLM does the same subtraction per request in `get_max_tokens`
    (vllm/entrypoints/serve/utils/api_utils.py), after the fact; you do it before.
    """
    raise NotImplementedError("Capstone exercise 1: the source budget of a request")


def plan_chunks(segments: list[Segment], budget: ChunkBudget, overlap: int,
                max_paragraphs: int | None = None) -> list[Chunk]:
    """The document's segments packed, in order, into chunks that fit `budget`.

    A segment (a paragraph, or a run of sentences of an over-long one) is never split. The rules:
      - `budget.whole_document`: one chunk, `Chunk(0, 0, len(segments), 0)`.
      - Otherwise greedy, from the first segment: a chunk takes segments while its source tokens
        stay <= `budget.max_source_tokens` and (if `max_paragraphs` is not None) it holds at most
        `max_paragraphs` segments. A chunk always takes at least one segment, even one larger
        than the budget (that request is then larger than planned, but the text is not lost).
      - Context: the segments just before the chunk, walking back one at a time: at most
        `overlap` of them, never before the document's start, and only while their tokens sum
        to <= `budget.max_context_tokens` (stop at the first that does not fit). The first
        chunk has none. `Chunk.context_start` is the first context segment (== start: none).
      - `Chunk(index, start, end, context_start)`: index 0, 1, ...; the chunk is
        `segments[start:end]`, the next chunk starts at `end`.

    Args:
        segments: the document, in order (`Segment.num_tokens` is each one's length).
        budget: from `source_budget`.
        overlap: the most segments of context per chunk.
        max_paragraphs: the most segments per chunk (None: tokens decide alone).

    Returns:
        The chunks, covering every segment exactly once, in order.

    Example: segment tokens [5, 5, 5, 20], max_source_tokens 10, max_context_tokens 5, overlap 1:
    [Chunk(0, 0, 2, 0), Chunk(1, 2, 3, 1), Chunk(2, 3, 4, 2)].
    """
    raise NotImplementedError("Capstone exercise 2: chunks and their overlap context")
