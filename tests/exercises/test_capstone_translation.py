"""Grades the capstone's exercise: fitting every request into the server's `max_model_len`.

- source_budget / plan_chunks against the reference (labs/capstone_translation/solution.py) on
  generated documents: random token counts, over-long segments, overlap 0..3, paragraph caps,
  whole documents, contexts too small for the shared prompt; exact budgets and chunk lists;
- rules that need no reference: the budget reserves the output (shared prompt + overhead +
  source + context + output_ratio x source <= max_model_len) and wastes no room; every segment
  in exactly one chunk, in order; chunks within the budget unless one over-long segment, and
  greedy; at most `overlap` segments of context right before the chunk, within its budget;
- against vLLM itself (the session's test server): the pipeline's own plan (`make_plan`, your
  chunker through $LABS_ENGINE) of a long document; its largest chunk sent as the pipeline sends
  it; vLLM must accept it, count the prompt as the plan did, and give the whole reserved output;
  the same chunk one token past the context shows the limit is vLLM's (output clamped, prompt
  refused with HTTP 400).
Each check also fails tests/exercises/broken_capstone.py (the "grader catches" tests).

Runs the reference by default; `make grade LAB=capstone` (LABS_GRADE=learner) runs yours.
"""

from __future__ import annotations

import inspect
import random
from typing import Any

import pytest

from labs.capstone_translation import chunking
from labs.capstone_translation.chunking import Chunk, ChunkBudget, ContextTooSmallError, Segment
from labs.capstone_translation.endpoint import connect, token_counter
from labs.core.grading import ENGINE_ENV, implementation_module_name, load_implementation, reference
from tests.exercises import capstone_requests as served
from tests.exercises.mirror import assert_learner_mirrors_reference

BROKEN = "tests.exercises.broken_capstone"
EXERCISE = "capstone_chunking"
EPS = 1e-6  # float slack for the rules' products (the quotients themselves are truncated with int())


@pytest.fixture(scope="module")
def impl() -> Any:
    return load_implementation(EXERCISE)


# --- 1. budgets: vs the reference, and the rules ---------------------------------------------------

def budget_cases(seed: int, count: int) -> list[dict[str, Any]]:
    """source_budget arguments: contexts 64..32k, shared prompts that (nearly) fill them, documents near the whole-fit line."""
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        max_model_len = rng.choice([rng.randint(64, 4096), 2048, 4096, 32768])
        ratio = rng.choice([0.5, 1.0, 1.2, 1.5, 2.0, 3.0])
        overhead = rng.choice([0, 16, 16, 40])
        num_shared = (max_model_len - overhead - rng.randint(-5, 40) if rng.random() < 0.15  # a crowded context
                      else rng.randint(0, max_model_len // 2))
        whole_fits = max(1, int((max_model_len - num_shared - overhead) / (1 + ratio)))
        num_document = max(1, rng.choice([whole_fits, whole_fits + 1, whole_fits - 1, rng.randint(1, 3 * max_model_len)]))
        cases.append(dict(max_model_len=max_model_len, num_shared_tokens=num_shared, num_document_tokens=num_document,
                          max_chunk_tokens=rng.choice([None, None, rng.randint(1, 2000), num_document]),
                          output_ratio=ratio, overlap=rng.randint(0, 3), whole_document_allowed=rng.random() < 0.8,
                          per_request_overhead=overhead))
    return cases


def budget_of(impl: Any, case: dict[str, Any]) -> ChunkBudget | str:
    args = dict(case)
    try:
        return impl.source_budget(args.pop("max_model_len"), args.pop("num_shared_tokens"),
                                  args.pop("num_document_tokens"), **args)
    except ContextTooSmallError:
        return "ContextTooSmallError"


def check_budgets(impl: Any, cases: list[dict[str, Any]]) -> None:
    for case in cases:
        got, expected = budget_of(impl, case), budget_of(reference(EXERCISE), case)
        assert got == expected, f"source_budget differs from the reference for {case}: you give {got}, the reference {expected}"


def check_budget_rules(impl: Any, cases: list[dict[str, Any]]) -> None:
    for case in cases:
        got = budget_of(impl, case)
        free = case["max_model_len"] - case["num_shared_tokens"] - case["per_request_overhead"]
        ratio, cap = case["output_ratio"], case["max_chunk_tokens"]
        share = 0.5 if case["overlap"] else 0.0
        num_document = case["num_document_tokens"]
        whole = (case["whole_document_allowed"] and num_document <= int(free / (1 + ratio))
                 and (cap is None or num_document <= cap))
        if whole:
            assert got == ChunkBudget(case["max_model_len"], case["num_shared_tokens"], num_document, 0, True), \
                f"the whole document ({num_document} tokens, and its output) fits in one request: {case}: you give {got}"
            continue
        fits = int(free / (1 + ratio + share))
        if fits < 8:
            assert got == "ContextTooSmallError", f"only {fits} source tokens fit, raise ContextTooSmallError: {case}"
            continue
        assert isinstance(got, ChunkBudget) and not got.whole_document, \
            f"the document and its output do not fit in one request (or may not): chunks needed: {case}: you give {got}"
        used = got.max_source_tokens * (1 + ratio) + got.max_context_tokens
        assert used <= free + EPS, (
            f"the budget does not reserve the output: {got.max_source_tokens} source + {got.max_context_tokens} "
            f"context + {ratio} x source of output = {used:.0f} tokens, but only {free} are free in max_model_len "
            f"{case['max_model_len']} after the shared prompt and overhead: {case}")
        assert got.max_context_tokens == int(got.max_source_tokens * share), \
            f"the context gets int({share} x source) tokens: {got} for {case}"
        assert (cap is not None and got.max_source_tokens == cap) or \
            (got.max_source_tokens + 1) * (1 + ratio + share) > free - EPS, \
            f"one more source token would still fit: the budget wastes the context: {got} for {case}"
        assert cap is None or got.max_source_tokens <= cap, f"more than the user's cap: {got} for {case}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_source_budget_matches_the_reference(impl: Any, seed: int) -> None:
    check_budgets(impl, budget_cases(seed, 1000))


@pytest.mark.parametrize("seed", [3, 4])
def test_source_budget_keeps_the_rules(impl: Any, seed: int) -> None:
    check_budget_rules(impl, budget_cases(seed, 1000))


def test_grader_catches_a_budget_without_output_reserve() -> None:
    broken = load_implementation(EXERCISE, BROKEN)
    with pytest.raises(AssertionError, match="source_budget differs from the reference"):
        check_budgets(broken, budget_cases(0, 200))
    with pytest.raises(AssertionError, match="do not fit in one request"):
        check_budget_rules(broken, budget_cases(3, 200))
    with pytest.raises(AssertionError, match="does not reserve the output"):
        check_budget_rules(broken, [dict(case, whole_document_allowed=False) for case in budget_cases(3, 200)])


# --- 2. chunk plans: vs the reference, and the rules ---------------------------------------------

def plan_cases(seed: int, count: int) -> list[tuple[list[Segment], ChunkBudget, int, int | None]]:
    """(segments, budget, overlap, max_paragraphs): short and over-long segments, tight contexts, whole documents."""
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        max_source = rng.randint(5, 120)
        tokens = [rng.randint(1, max_source * 2) if rng.random() < 0.1 else rng.randint(1, max(1, max_source // 3))
                  for _ in range(rng.randint(1, 40))]
        segments = [Segment(i, f"p{i}", n) for i, n in enumerate(tokens)]
        overlap = rng.randint(0, 3)
        max_context = rng.choice([0, max_source // 2, rng.randint(0, max_source)]) if overlap else 0
        budget = ChunkBudget(2048, 200, max_source, max_context, rng.random() < 0.05)
        if rng.random() < 0.3:  # the budget the pipeline would make for this document
            budget = reference(EXERCISE).source_budget(rng.randint(300, 4096), rng.randint(0, 200), sum(tokens),
                                                       max_chunk_tokens=rng.choice([None, max_source]),
                                                       output_ratio=1.5, overlap=overlap)
        cases.append((segments, budget, overlap, rng.choice([None, None, 1, 2, 3, 4])))
    return cases


def spans(chunks: list[Chunk]) -> list[tuple[int, int, int, int]]:
    return [(c.index, c.start, c.end, c.context_start) for c in chunks]


def describe(segments: list[Segment], budget: ChunkBudget, overlap: int, max_paragraphs: int | None) -> str:
    return (f"segment tokens {[s.num_tokens for s in segments]}, max_source_tokens={budget.max_source_tokens}, "
            f"max_context_tokens={budget.max_context_tokens}, whole_document={budget.whole_document}, "
            f"overlap={overlap}, max_paragraphs={max_paragraphs}")


def check_plans(impl: Any, cases: list[tuple[list[Segment], ChunkBudget, int, int | None]]) -> None:
    for segments, budget, overlap, max_paragraphs in cases:
        got = spans(impl.plan_chunks(list(segments), budget, overlap, max_paragraphs))
        expected = spans(reference(EXERCISE).plan_chunks(list(segments), budget, overlap, max_paragraphs))
        assert got == expected, (f"plan_chunks differs from the reference: {describe(segments, budget, overlap, max_paragraphs)}: "
                                 f"you plan (index, start, end, context_start) {got}, the reference {expected}")


def check_plan_rules(impl: Any, cases: list[tuple[list[Segment], ChunkBudget, int, int | None]]) -> None:
    for segments, budget, overlap, max_paragraphs in cases:
        chunks = impl.plan_chunks(list(segments), budget, overlap, max_paragraphs)
        tokens = [s.num_tokens for s in segments]
        where = describe(segments, budget, overlap, max_paragraphs)
        if budget.whole_document:
            assert spans(chunks) == [(0, 0, len(segments), 0)], f"a whole document is one chunk: {where}: {spans(chunks)}"
            continue
        assert [c.index for c in chunks] == list(range(len(chunks))), f"chunk indices 0, 1, ...: {spans(chunks)}"
        assert [c.start for c in chunks] == [0] + [c.end for c in chunks[:-1]] and chunks[-1].end == len(segments), \
            f"every segment in exactly one chunk, in order: {where}: {spans(chunks)}"
        for c in chunks:
            size = sum(tokens[c.start:c.end])
            assert c.end > c.start and (size <= budget.max_source_tokens or c.end - c.start == 1), \
                f"chunk {c.index} holds {size} source tokens (only one over-long segment may exceed the budget): {where}"
            assert max_paragraphs is None or c.end - c.start <= max_paragraphs, f"chunk {c.index}: too many segments: {where}"
            full = size + tokens[c.end] > budget.max_source_tokens if c.end < len(segments) else True
            assert full or c.end - c.start == max_paragraphs, \
                f"chunk {c.index} could still take segment {c.end} (greedy packing): {where}: {spans(chunks)}"
            context = sum(tokens[c.context_start:c.start])
            assert 0 <= c.context_start <= c.start and c.start - c.context_start <= overlap, \
                f"chunk {c.index} has {c.start - c.context_start} segments of context, overlap is {overlap}: {where}"
            assert context <= budget.max_context_tokens, \
                f"chunk {c.index}'s context holds {context} tokens, more than max_context_tokens: {where}"
            room = c.context_start > 0 and c.start - c.context_start < overlap
            assert not room or context + tokens[c.context_start - 1] > budget.max_context_tokens, \
                f"chunk {c.index}'s context could still take segment {c.context_start - 1}: {where}: {spans(chunks)}"


def test_plan_chunks_by_hand(impl: Any) -> None:
    segments = [Segment(i, f"p{i}", n) for i, n in enumerate([5, 5, 5, 20])]
    chunks = impl.plan_chunks(segments, ChunkBudget(2048, 200, 10, 5, False), 1)
    assert spans(chunks) == [(0, 0, 2, 0), (1, 2, 3, 1), (2, 3, 4, 2)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_chunks_matches_the_reference(impl: Any, seed: int) -> None:
    check_plans(impl, plan_cases(seed, 1000))


@pytest.mark.parametrize("seed", [3, 4])
def test_plan_chunks_keeps_the_rules(impl: Any, seed: int) -> None:
    check_plan_rules(impl, plan_cases(seed, 1000))


def test_grader_catches_one_segment_of_context_too_many() -> None:
    broken = load_implementation(EXERCISE, BROKEN)
    with pytest.raises(AssertionError, match="plan_chunks differs from the reference"):
        check_plans(broken, plan_cases(0, 300))
    with pytest.raises(AssertionError, match="segments of context, overlap is"):
        check_plan_rules(broken, plan_cases(3, 300))


# --- 3. against vLLM: the largest planned request on a real server --------------------------------

@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, impl: Any, tmp_path_factory: pytest.TempPathFactory) -> served.ServedDocument:
    """The test server and a long document; an unanswered exercise fails here, before the server starts."""
    impl.source_budget(2048, 200, 5000, max_chunk_tokens=None, output_ratio=1.5, overlap=1)
    vllm_server = request.getfixturevalue("vllm_server")
    endpoint = connect(vllm_server.url, api_key=vllm_server.api_key)
    return served.ServedDocument(endpoint, token_counter(endpoint),
                                 served.write_long_document(tmp_path_factory.mktemp("capstone-grader")))


@pytest.mark.server
def test_vllm_accepts_the_largest_planned_request(server: served.ServedDocument) -> None:
    planned = served.check_vllm_accepts_the_plan(implementation_module_name(EXERCISE), server)
    assert planned.num_prompt_tokens + planned.max_tokens == server.endpoint.max_model_len, \
        "the document's chunks sit on the limit: their prompt and max_tokens fill the context"


@pytest.mark.server
def test_one_token_past_the_context_is_vllms_limit(server: served.ServedDocument) -> None:
    """vLLM 0.32.0 clamps an output that would pass max_model_len and refuses a prompt that does."""
    endpoint = server.endpoint
    max_model_len = endpoint.max_model_len
    plan = served.plan_with(implementation_module_name(EXERCISE), server.path, endpoint, server.counter)
    planned = served.largest_request(plan, endpoint, served.OVERLAP)
    assert planned.num_prompt_tokens + planned.max_tokens == max_model_len
    one_more = served.send(endpoint, planned.messages, planned.max_tokens + 1)
    assert (one_more.num_output_tokens, one_more.finish_reason) == (planned.max_tokens, "length"), \
        "vLLM (get_max_tokens) gives no output token past max_model_len, whatever max_tokens says"
    token_ids = served.vllm_prompt_token_ids(endpoint, planned.messages)
    assert len(token_ids) == planned.num_prompt_tokens
    padded = (token_ids * (max_model_len // len(token_ids) + 2))[:max_model_len + 1]
    status, answer = served.complete_token_ids(endpoint, padded[:max_model_len - 1], 1)
    assert status == 200 and answer["usage"]["completion_tokens"] == 1, answer
    status, message = served.complete_token_ids(endpoint, padded, 1)
    assert status == 400 and f"maximum context length is {max_model_len} tokens" in message, message


@pytest.mark.server
def test_grader_catches_a_plan_vllm_cannot_answer_in_full(server: served.ServedDocument) -> None:
    with pytest.raises(AssertionError, match="less than the 1.5 x source the budget must reserve|vLLM refused"):
        served.check_vllm_accepts_the_plan(BROKEN, server)


# --- the learner's file and the pipeline's switch ---------------------------------------------------

def test_learner_file_mirrors_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    learner, ref, public = assert_learner_mirrors_reference(EXERCISE, {"source_budget", "plan_chunks"})
    assert set(public) == {"source_budget", "plan_chunks"}
    for name in public:  # the pipeline's entry points take the same arguments
        assert inspect.signature(getattr(chunking, name)) == inspect.signature(getattr(ref, name)), name
    with pytest.raises(NotImplementedError):
        learner.source_budget(2048, 200, 5000, max_chunk_tokens=None, output_ratio=1.5, overlap=1)
    with pytest.raises(NotImplementedError):
        learner.plan_chunks([Segment(0, "p", 5)], ChunkBudget(2048, 200, 10, 5, False), 1)
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    monkeypatch.setenv("LABS_GRADE", "learner")  # grading does not switch the pipeline ...
    assert chunking.chunker() is ref
    monkeypatch.setenv(ENGINE_ENV, "learner")  # ... opting in does
    assert chunking.chunker() is learner
