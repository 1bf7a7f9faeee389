"""The capstone grader's vLLM side: a plan made by the pipeline with a chosen chunker, its chunks sent as the pipeline sends them.

Why its own module: the graded tests (test_capstone_translation.py) and their "grader catches"
test run the same requests, with the learner's, the reference's or a broken chunker; nothing
here re-implements the pipeline: the plan is `make_plan`'s, the messages `DocumentPlan.messages`,
the output limit `ChunkRequest.max_tokens`, the streamed request `request.stream_once`.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from labs.capstone_translation.endpoint import Endpoint, TokenCounter
from labs.capstone_translation.pipeline import DocumentPlan, TranslateConfig, make_plan
from labs.capstone_translation.remedy import ChunkRequest
from labs.capstone_translation.request import Attempt, stream_once
from labs.capstone_translation.source import read_document
from labs.core.grading import ENGINE_ENV
from labs.core.models.phrasebook import load_phrasebook
from labs.core.models.prompt_format import PromptTemplate

SENTENCES_PER_PARAGRAPH = 6  # paragraphs of a real document's length (one phrasebook line is ~6 tokens)
NUM_PARAGRAPHS = 50
# Greedy, and generate until max_tokens: the answer then takes every output token vLLM allows.
FILL_THE_OUTPUT: dict[str, Any] = {"temperature": 0.0, "extra_body": {"ignore_eos": True}}
TIMEOUT_S = 300.0
OVERLAP = TranslateConfig().overlap  # the pipeline's default: segments of context per chunk


@dataclass(frozen=True)
class ServedDocument:
    """The test server (endpoint and its token counter) and the document its requests are planned from."""

    endpoint: Endpoint
    counter: TokenCounter
    path: Path


def write_long_document(folder: Path) -> Path:
    """A Japanese document of 50 paragraphs of 6 phrasebook sentences (~2,000 tokens): several chunks.

    Why this one: planned with no chunk cap, each chunk's prompt plus the pipeline's `max_tokens`
    fills the server's 2048-token context to the last token, so the requests sit on vLLM's limit.
    """
    sentences = [entry.ja for entry in load_phrasebook()][:SENTENCES_PER_PARAGRAPH * NUM_PARAGRAPHS]
    paragraphs = ["".join(sentences[i:i + SENTENCES_PER_PARAGRAPH])
                  for i in range(0, len(sentences), SENTENCES_PER_PARAGRAPH)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "long_document.txt"
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


def plan_with(module: str, path: Path, endpoint: Endpoint, counter: TokenCounter) -> DocumentPlan:
    """The pipeline's own plan of `path` for this server, its chunker taken from `module`.

    Args:
        module: a module with `source_budget` and `plan_chunks` (the learner's, the reference's,
            a broken one): the pipeline's switch ($LABS_ENGINE, labs.capstone_translation.chunking)
            is pointed at it while `make_plan` runs.
        path: the document; endpoint / counter: the server and its token counter.

    Returns:
        The plan, with every chunk's prompt tokens counted (`DocumentPlan.num_prompt_tokens`).
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENGINE_ENV, module)
        return make_plan(read_document(path), PromptTemplate.load(), counter, endpoint,
                         TranslateConfig(max_chunk_tokens=None, max_chunk_paragraphs=None, progress=False))


@dataclass(frozen=True)
class PlannedRequest:
    """One chunk's request exactly as the pipeline would send it.

    Attributes:
        chunk_index: which chunk of the plan.
        messages: `DocumentPlan.messages` (shared prompt, context, numbered paragraphs).
        num_prompt_tokens: the plan's count of them (the pipeline's token counter).
        num_source_tokens: the chunk's own text (what the budget reserves output for).
        max_tokens: `ChunkRequest.max_tokens`, what the pipeline asks vLLM for.
    """

    chunk_index: int
    messages: list[dict[str, str]]
    num_prompt_tokens: int
    num_source_tokens: int
    max_tokens: int


def largest_request(plan: DocumentPlan, endpoint: Endpoint, overlap: int) -> PlannedRequest:
    """The request of the plan's chunk with the longest prompt, built by the pipeline's own code."""
    index = max(range(len(plan.chunks)), key=lambda i: plan.num_prompt_tokens[i])
    chunk = plan.chunks[index]
    segments = plan.segments[chunk.start:chunk.end]
    context = [s.text for s in plan.segments[chunk.context_start:chunk.start]]
    request = ChunkRequest(plan.template, context, segments, plan.num_prompt_tokens[index], endpoint.max_model_len,
                           overlap)
    num_source_tokens = sum(s.num_tokens for s in segments)
    return PlannedRequest(index, plan.messages(chunk), plan.num_prompt_tokens[index], num_source_tokens,
                          request.max_tokens(num_source_tokens))


def send(endpoint: Endpoint, messages: list[dict[str, str]], max_tokens: int) -> Attempt:
    """One streamed chat completion through the pipeline's `stream_once`, filling its output (`ignore_eos`).

    Raises:
        openai.BadRequestError: vLLM refused the request (HTTP 400).
    """
    import openai

    async def once() -> Attempt:
        client = openai.AsyncOpenAI(base_url=f"{endpoint.base_url}/v1", api_key=endpoint.api_key or "EMPTY",
                                    max_retries=0)
        try:
            return await stream_once(client, endpoint.model, messages, max_tokens, FILL_THE_OUTPUT, TIMEOUT_S)
        finally:
            await client.close()

    return asyncio.run(once())


def vllm_prompt_token_ids(endpoint: Endpoint, messages: list[dict[str, str]]) -> list[int]:
    """The token ids vLLM makes of a chat request (its `/tokenize`, chat template and generation prompt included)."""
    body = {"model": endpoint.model, "messages": messages, "add_generation_prompt": True}
    request = urllib.request.Request(f"{endpoint.base_url}/tokenize", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {endpoint.api_key}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return list(json.load(reply)["tokens"])


def complete_token_ids(endpoint: Endpoint, prompt_token_ids: list[int], max_tokens: int) -> tuple[int, Any]:
    """`/v1/completions` on raw token ids: (HTTP status, the answer or vLLM's error message)."""
    body = {"model": endpoint.model, "prompt": prompt_token_ids, "max_tokens": max_tokens, "temperature": 0.0}
    request = urllib.request.Request(f"{endpoint.base_url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {endpoint.api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]["message"]


def check_vllm_accepts_the_plan(module: str, server: ServedDocument) -> PlannedRequest:
    """The long document planned with `module`'s chunker; its largest request sent to vLLM as the pipeline sends it.

    vLLM must accept it, count its prompt as the plan did, and generate every one of the
    `max_tokens` the pipeline asks for (`ignore_eos`); what is left of the context after the
    prompt (vLLM's count) must hold the output the budget reserves, in this chunk and every other.

    Returns:
        The request sent.
    """
    import openai

    endpoint, ratio = server.endpoint, TranslateConfig().output_ratio
    plan = plan_with(module, server.path, endpoint, server.counter)
    assert len(plan.chunks) >= 2, f"the long document must be cut into chunks: {plan.budget}"
    planned = largest_request(plan, endpoint, OVERLAP)
    try:
        answer = send(endpoint, planned.messages, planned.max_tokens)
    except openai.BadRequestError as exc:
        raise AssertionError(f"vLLM refused the plan's largest request (chunk {planned.chunk_index + 1}, "
                             f"{planned.num_prompt_tokens} prompt tokens planned): HTTP 400 {exc.message}") from exc
    assert answer.num_prompt_tokens == planned.num_prompt_tokens, "the plan counts the prompt as vLLM does"
    assert (answer.num_output_tokens, answer.finish_reason) == (planned.max_tokens, "length"), \
        f"vLLM gave {answer.num_output_tokens} of the {planned.max_tokens} output tokens the pipeline asked for"
    for chunk, num_prompt_tokens in zip(plan.chunks, plan.num_prompt_tokens):
        num_source_tokens = sum(s.num_tokens for s in plan.segments[chunk.start:chunk.end])
        room = endpoint.max_model_len - num_prompt_tokens
        assert room >= ratio * num_source_tokens, (
            f"chunk {chunk.index + 1} of {len(plan.chunks)}: its prompt takes {num_prompt_tokens} of the server's "
            f"{endpoint.max_model_len} tokens, leaving {room} for the translation of {num_source_tokens} source "
            f"tokens, less than the {ratio} x source the budget must reserve: vLLM cuts the answer at the "
            f"context's end (finish_reason 'length'); plan budget {plan.budget}")
    return planned
