"""One chunk's requests: the whole chunk first; after a failed run, one sentence per request.

Why a second remedy: adjusted sampling (labs.capstone_translation.request) fixes answers that went wrong by
chance. Some inputs go wrong under every seed: `tiny-phrasebook`, asked for a paragraph of two
phrasebook sentences, can answer the second sentence twice (`repeated phrase '您结婚了吗？'`) at
any temperature, so replaying a chunk's attempts cannot help it. Rule: a chunk that an earlier
run could not translate is retried with a different INPUT: each sentence in a request of its own
(with the sentences before it as context), the smallest unit the planner knows, and with the next
seeds of its attempt sequence (test: tests/test_capstone_translation.py::
test_a_rerun_continues_a_rejected_chunks_attempts_and_finishes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from labs.capstone_translation.chunking import Segment, split_sentences
from labs.core.models.prompt_format import PromptTemplate
from labs.capstone_translation.request import (Attempt, NoAcceptableAnswerError, RetryPolicy, max_tokens_for,
                                    translate_chunk)

@dataclass
class ChunkOutcome:
    """A translated chunk.

    Attributes:
        translations: one per segment of the chunk.
        accepted: the attempts whose answers were kept (one, or one per sentence).
        attempts: every request sent, in order (rejected ones explain the retries).
        by_sentence: whether the chunk was sent one sentence per request.
    """

    translations: list[str]
    accepted: list[Attempt]
    attempts: list[Attempt]
    by_sentence: bool


@dataclass(frozen=True)
class ChunkRequest:
    """Everything needed to ask for one chunk.

    Attributes:
        template: the document's prompt template.
        context: the overlap paragraphs before the chunk (shown, not translated).
        segments: the chunk's segments.
        num_prompt_tokens: the whole chunk's prompt (an upper bound for any one sentence's).
        max_model_len: the server's context length.
        overlap: how many earlier units (paragraphs or sentences) to show as context.
    """

    template: PromptTemplate
    context: list[str]
    segments: list[Segment]
    num_prompt_tokens: int
    max_model_len: int
    overlap: int

    def max_tokens(self, num_source_tokens: int) -> int:
        return max_tokens_for(self.max_model_len, self.num_prompt_tokens, num_source_tokens)


async def translate_planned_chunk(client: Any, model: str, request: ChunkRequest, temperature: float,
                                  policy: RetryPolicy, first_attempt: int) -> ChunkOutcome:
    """Translate one chunk: whole on its first run, sentence by sentence on a rerun that can split it.

    Args:
        client / model: an `openai.AsyncOpenAI` and the served model name.
        request: the chunk (see `ChunkRequest`).
        temperature / policy: the job's sampling temperature and retry bounds.
        first_attempt: attempts earlier runs used on this chunk (0: never tried).

    Returns:
        The chunk's translations and attempts.

    Raises:
        NoAcceptableAnswerError: no acceptable answer within this run's attempts.
        ChunkFailedError: the server could not be reached.
    """
    sources = [s.text for s in request.segments]
    pieces = [split_sentences(text) for text in sources]
    if first_attempt == 0 or sum(map(len, pieces)) == 1:
        messages = request.template.chunk_messages(sources, request.context)
        max_tokens = request.max_tokens(sum(s.num_tokens for s in request.segments))
        accepted, attempts = await translate_chunk(client, model, messages, sources, max_tokens, temperature,
                                                   policy, first_attempt)
        return ChunkOutcome(list(accepted.verdict.translations), [accepted], attempts, False)
    translations, kept, sent = [], [], []
    earlier = list(request.context)
    for segment, sentences in zip(request.segments, pieces):
        parts = []
        for sentence in sentences:
            context = earlier[-request.overlap:] if request.overlap else []
            estimate = math.ceil(segment.num_tokens * len(sentence) / max(1, len(segment.text)))
            try:
                accepted, attempts = await translate_chunk(
                    client, model, request.template.chunk_messages([sentence], context), [sentence],
                    request.max_tokens(estimate), temperature, policy, first_attempt)
            except NoAcceptableAnswerError as exc:
                raise NoAcceptableAnswerError(f"sentence {sentence!r}, one per request: {exc}",
                                              sent + exc.attempts) from exc
            sent += attempts
            kept.append(accepted)
            parts.append(accepted.verdict.translations[0])
            earlier.append(sentence)
        translations.append("".join(parts))
    return ChunkOutcome(translations, kept, sent, True)
