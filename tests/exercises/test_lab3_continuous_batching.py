"""Grades Lab 3's scheduler against vLLM's real Scheduler, step by step.

Each trace (requests with a prompt, max_tokens and an arrival step) runs through vLLM's own
`Scheduler` (labs.core.vllm_internals.StandaloneScheduler: the real class with no model behind it)
and through the implementation under test, which gets Lab 2's reference KV cache manager with
the same number of blocks. Both are fed the same made-up sampled tokens. After every
`schedule()` they must agree on the batch (requests, in order, and tokens each), the admitted
and the preempted requests; after every `update_from_output()` on the finished requests, the
queues, every request's num_computed_tokens and block table, and the free block count.

Runs the reference solution by default; `make grade LAB=3` (LABS_GRADE=learner) runs yours.
"""

from __future__ import annotations

import inspect
import random
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from labs.core import vllm_internals as vi
from labs.core.grading import load_implementation
from labs.core.mini.request import Request, RequestStatus
from labs.lab3_continuous_batching import solution as reference
from labs.lab2_paged_attention.solution_kv_cache import KVCacheManager

BLOCK_SIZE = 4  # small blocks keep traces short; the scheduler's rules do not depend on the size
NEVER_SAMPLED_EOS = 2  # fake_token() gives 10..109, so this EOS never stops a request
HISTORY_LINES = 6  # steps shown before the one that differs


@dataclass(frozen=True)
class TraceRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    arrival_step: int = 0  # added to both schedulers just before this step's schedule()


@dataclass(frozen=True)
class Trace:
    name: str
    requests: tuple[TraceRequest, ...]
    num_blocks: int  # including the null block 0, as in vLLM
    max_num_seqs: int
    max_num_batched_tokens: int
    long_prefill_token_threshold: int = 0
    enable_caching: bool = True
    eos_token_id: int = NEVER_SAMPLED_EOS

    def settings(self) -> str:
        return (f"block_size={BLOCK_SIZE} num_blocks={self.num_blocks} max_num_seqs={self.max_num_seqs} "
                f"max_num_batched_tokens={self.max_num_batched_tokens} long_prefill_token_threshold="
                f"{self.long_prefill_token_threshold} prefix_caching={self.enable_caching} eos={self.eos_token_id}")

    def describe_requests(self) -> str:
        return ", ".join(f"{r.request_id}(prompt {len(r.prompt_token_ids)}, max_tokens {r.max_tokens}, "
                         f"arrives {r.arrival_step})" for r in self.requests)


def tokens(seed: int, num_tokens: int) -> tuple[int, ...]:
    """Distinct-looking prompt tokens; equal seeds give equal prefixes (prefix-cache hits)."""
    return tuple(200 + (seed * 131 + i * 17) % 3000 for i in range(num_tokens))


def fake_token(step: int, batch_index: int) -> int:
    """The token the pretend model samples for the request at `batch_index` of this step's batch."""
    return (step * 7 + batch_index) % 100 + 10


def req(request_id: str, prompt: tuple[int, ...], max_tokens: int, arrival_step: int = 0) -> TraceRequest:
    return TraceRequest(request_id, prompt, max_tokens, arrival_step)


SYSTEM_PROMPT = tokens(99, 12)  # 3 full blocks shared by several requests

TRACES = [
    # Prompts longer than the budget are prefilled in chunks, beside decodes.
    Trace("chunked_prefill", (req("a", tokens(1, 30), 4), req("b", tokens(2, 21), 3), req("c", tokens(3, 3), 5)),
          num_blocks=64, max_num_seqs=4, max_num_batched_tokens=8),
    # The threshold caps each request's chunk, except while a request is alone.
    Trace("long_prefill_threshold", (req("alone", tokens(4, 26), 3), req("long", tokens(5, 25), 2, 2),
                                     req("short", tokens(6, 3), 4, 2), req("mid", tokens(7, 14), 3, 3)),
          num_blocks=64, max_num_seqs=4, max_num_batched_tokens=16, long_prefill_token_threshold=6),
    # More requests than seats: the rest wait, in order.
    Trace("max_num_seqs", tuple(req(f"r{i}", tokens(10 + i, 3 + 2 * i), 3 + i % 3) for i in range(6)),
          num_blocks=64, max_num_seqs=2, max_num_batched_tokens=32),
    # 8 usable blocks, all taken by four 8-token prompts; at their 9th token p0 preempts p3,
    # then p2, needing a block itself, is the newest left and preempts itself.
    Trace("preemption", tuple(req(f"p{i}", tokens(20 + i, 8), 10) for i in range(4)),
          num_blocks=9, max_num_seqs=4, max_num_batched_tokens=32),
    # Same, without prefix caching: a resumed request recomputes everything.
    Trace("preemption_no_prefix_caching", (req("p0", tokens(20, 7), 10), req("p1", tokens(21, 9), 10),
                                           req("p2", tokens(22, 6), 10)),
          num_blocks=9, max_num_seqs=4, max_num_batched_tokens=16, enable_caching=False),
    # Shared system prompt and an identical prompt: prefix-cache hits skip computed blocks.
    Trace("prefix_cache", (req("s0", SYSTEM_PROMPT + tokens(30, 5), 3), req("s1", SYSTEM_PROMPT + tokens(31, 6), 3, 2),
                           req("s2", SYSTEM_PROMPT + tokens(30, 5), 2, 3), req("s3", SYSTEM_PROMPT, 2, 6),
                           req("s4", tokens(32, 9), 2, 6)),
          num_blocks=32, max_num_seqs=4, max_num_batched_tokens=16),
    # A prompt that fits chunk by chunk but not as a whole must wait (vLLM's full-prompt check).
    Trace("admission_needs_whole_prompt", (req("small", tokens(40, 10), 8), req("huge", tokens(41, 36), 2, 1),
                                           req("after", tokens(42, 4), 2, 2)),
          num_blocks=12, max_num_seqs=4, max_num_batched_tokens=8),
    # Everything at once: arrivals mid-run, shared prefixes, scarce blocks, chunking, EOS.
    Trace("mixed_arrivals_eos", (req("m0", SYSTEM_PROMPT + tokens(50, 6), 9), req("m1", tokens(51, 17), 6, 1),
                                 req("m2", SYSTEM_PROMPT + tokens(52, 3), 12, 2),
                                 req("m3", SYSTEM_PROMPT + tokens(50, 6), 5, 4), req("m4", tokens(53, 5), 7, 5),
                                 req("m5", tokens(51, 17), 4, 9), req("m6", tokens(54, 2), 3, 12)),
          num_blocks=16, max_num_seqs=3, max_num_batched_tokens=12, long_prefill_token_threshold=8,
          eos_token_id=fake_token(5, 0)),
]


def random_trace(seed: int) -> Trace:
    """A random but always finishable trace: every request fits in the KV cache on its own."""
    rng = random.Random(seed)
    prefixes = [tokens(500 + k, 4 * rng.randint(1, 4) + rng.choice([0, 1, 2])) for k in range(3)]
    requests = tuple(
        req(f"q{i}", rng.choice([(), *prefixes]) + tokens(rng.randrange(10**6), rng.randint(1, 30)),
            max_tokens=rng.randint(1, 15), arrival_step=rng.randint(0, 12))
        for i in range(rng.randint(1, 9)))
    max_num_seqs = rng.randint(1, 5)
    num_blocks_alone = max(-(-(len(r.prompt_token_ids) + r.max_tokens) // BLOCK_SIZE) for r in requests) + 1
    return Trace(f"random_{seed}", requests, num_blocks=rng.randint(num_blocks_alone, num_blocks_alone + 8),
                 max_num_seqs=max_num_seqs, max_num_batched_tokens=rng.randint(max(max_num_seqs, 4), 40),
                 long_prefill_token_threshold=rng.choice([0, 0, 3, 6, 10]), enable_caching=rng.random() < 0.8,
                 eos_token_id=rng.choice([NEVER_SAMPLED_EOS, fake_token(rng.randint(0, 10), rng.randint(0, 3))]))


class SchedulerDiffers(AssertionError):
    """The implementation under test decided differently from vLLM at some step."""


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}:{v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return " ".join(map(str, value)) or "-"
    return str(value)


def _check(trace: Trace, step: int, phase: str, expected: dict[str, Any], got: dict[str, Any],
           history: list[str]) -> None:
    """Raise with a side-by-side table of every field if any differs."""
    if expected == got:
        return
    lines = [f"trace {trace.name!r} step {step}, after {phase}: your scheduler differs from vLLM's",
             f"  settings: {trace.settings()}", f"  requests: {trace.describe_requests()}",
             f"  {'':<22}{'vLLM':<34}yours"]
    for field in expected:
        mark = "   <-- differs" if expected[field] != got[field] else ""
        lines.append(f"  {field:<22}{_fmt(expected[field]):<34}{_fmt(got[field])}{mark}")
    if history:
        lines.append("  earlier steps (both agreed), step: batch | preempted | finished:")
        lines += [f"    {line}" for line in history[-HISTORY_LINES:]]
    raise SchedulerDiffers("\n".join(lines))


def _finish_reason(request: Request) -> str:
    return {RequestStatus.FINISHED_STOPPED: "stop", RequestStatus.FINISHED_LENGTH_CAPPED: "length"}.get(
        request.status, request.status.name)


def run_lockstep(trace: Trace, impl: Any, model_path: Path, max_steps: int = 300) -> int:
    """Play `trace` through vLLM's Scheduler and `impl.Scheduler`; raise at the first difference.

    Returns:
        The number of steps it took.
    """
    expected_sched = vi.StandaloneScheduler(
        str(model_path), block_size=BLOCK_SIZE, num_blocks=trace.num_blocks, max_num_seqs=trace.max_num_seqs,
        max_num_batched_tokens=trace.max_num_batched_tokens,
        long_prefill_token_threshold=trace.long_prefill_token_threshold, enable_prefix_caching=trace.enable_caching)
    kv_cache_manager = KVCacheManager(trace.num_blocks, BLOCK_SIZE, trace.enable_caching)
    sched = impl.Scheduler(kv_cache_manager, trace.max_num_seqs, trace.max_num_batched_tokens,
                           trace.long_prefill_token_threshold)
    requests: dict[str, Request] = {}
    history: list[str] = []
    last_arrival = max(r.arrival_step for r in trace.requests)
    for step in range(max_steps):
        for r in trace.requests:
            if r.arrival_step == step:
                expected_sched.add_request(r.request_id, list(r.prompt_token_ids), r.max_tokens, trace.eos_token_id)
                requests[r.request_id] = Request(r.request_id, list(r.prompt_token_ids), r.max_tokens)
                sched.add_request(requests[r.request_id])
        if step > last_arrival and not expected_sched.has_unfinished_requests():
            break

        expected_step = expected_sched.schedule()
        got_step = sched.schedule()
        _check(trace, step, "schedule()",
               {"batch (id:tokens)": expected_step.num_scheduled_tokens,
                "total tokens": sum(expected_step.num_scheduled_tokens.values()),
                "admitted": expected_step.scheduled_new_req_ids,
                "preempted": sorted(expected_step.preempted_req_ids)},
               {"batch (id:tokens)": dict(got_step.num_scheduled_tokens),
                "total tokens": got_step.total_num_scheduled_tokens,
                "admitted": list(got_step.scheduled_new_req_ids),
                "preempted": sorted(got_step.preempted_req_ids)}, history)

        # One token per scheduled request, as a model runner samples one per sequence; both
        # schedulers must ignore it for a request still short of the end of its prompt.
        sampled = {rid: [fake_token(step, i)] for i, rid in enumerate(expected_step.num_scheduled_tokens)}
        expected_finished = expected_sched.update_from_output(sampled)
        got_finished = {r.request_id: _finish_reason(r)
                        for r in sched.update_from_output(got_step, sampled, trace.eos_token_id)}
        expected_live = expected_sched.running_req_ids + expected_sched.waiting_req_ids
        _check(trace, step, "update_from_output()",
               {"finished": expected_finished,
                "running": expected_sched.running_req_ids,
                "waiting": expected_sched.waiting_req_ids,
                "num_computed_tokens": {rid: expected_sched.num_computed_tokens(rid) for rid in expected_live},
                "output tokens": {rid: expected_sched.output_token_ids(rid) for rid in expected_live},
                "block ids": {rid: expected_sched.block_ids(rid) for rid in expected_sched.running_req_ids},
                "free blocks": expected_sched.num_free_blocks()},
               {"finished": got_finished,
                "running": [r.request_id for r in sched.running],
                "waiting": [r.request_id for r in sched.waiting],
                "num_computed_tokens": {rid: requests[rid].num_computed_tokens for rid in expected_live},
                "output tokens": {rid: requests[rid].output_token_ids for rid in expected_live},
                "block ids": {rid: kv_cache_manager.get_block_ids(rid) for rid in expected_sched.running_req_ids},
                "free blocks": kv_cache_manager.get_num_free_blocks()}, history)
        history.append(f"step {step}: {_fmt(expected_step.num_scheduled_tokens)} | "
                       f"{_fmt(sorted(expected_step.preempted_req_ids))} | {_fmt(expected_finished)}")
    else:
        raise AssertionError(f"trace {trace.name!r}: vLLM still has requests after {max_steps} steps")
    assert not sched.has_unfinished_requests(), f"trace {trace.name!r}: vLLM is done, yours still has requests"
    return step


@pytest.fixture(scope="module")
def impl() -> Any:
    return load_implementation("lab3_scheduler")


@pytest.mark.parametrize("trace", TRACES, ids=[t.name for t in TRACES])
def test_scheduler_matches_vllm(impl: Any, model_path: Path, trace: Trace) -> None:
    run_lockstep(trace, impl, model_path)


def test_scheduler_matches_vllm_on_random_traces(impl: Any, model_path: Path) -> None:
    """Breadth after the hand-written traces: mixes of everything (stops at the first difference)."""
    for seed in range(40):
        run_lockstep(random_trace(seed), impl, model_path)


# --- The grader itself: it must catch wrong schedulers, and say where and how -----------------

# Classic mistakes, each as a one-line edit of the reference: (name, reference text, replacement).
MUTATIONS = [
    ("preempts_oldest", "preempted_req = self.running.pop()", "preempted_req = self.running.pop(0)"),
    ("ignores_token_budget", "token_budget = self.max_num_batched_tokens", "token_budget = 10**9"),
    ("admits_on_first_chunk", "if not self._whole_request_fits(request, computed_blocks):", "if False:"),
    ("threshold_even_when_alone", "if num_unfinished > 1 else 0", "if True else 0"),
    ("no_prefix_cache_lookup", "self.kv_cache_manager.get_computed_blocks(request)", "([], 0)"),
    ("keeps_partial_prefill_token", "continue  # a prefill chunk short", "pass  # a prefill chunk short"),
]


def mutant(name: str, old: str, new: str) -> ModuleType:
    """The reference module with one line changed: a scheduler that is wrong in one known way."""
    source = inspect.getsource(reference)
    assert source.count(old) == 1, f"mutation {name!r}: {old!r} is no longer in the reference"
    module = ModuleType(f"{reference.__name__}_{name}")
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    try:
        exec(compile(source.replace(old, new), f"<{name}>", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_grader_catches_a_wrong_scheduler(model_path: Path, mutation: tuple[str, str, str]) -> None:
    wrong = mutant(*mutation)
    messages = []
    for trace in TRACES:
        try:
            run_lockstep(trace, wrong, model_path)
        except SchedulerDiffers as exc:
            messages.append(str(exc))
    assert messages, f"no trace tells the mutant {mutation[0]!r} from vLLM"
    first = messages[0]
    assert "your scheduler differs from vLLM's" in first and "<-- differs" in first, first
    assert first.splitlines()[0].startswith("trace '") and " step " in first.splitlines()[0], first


def test_learner_file_mirrors_the_reference() -> None:
    """The learner's Scheduler has the reference's methods, with the same signatures."""
    learner = load_implementation("lab3_scheduler", "learner")
    for name in ("__init__", "add_request", "schedule", "update_from_output", "has_unfinished_requests"):
        assert inspect.signature(getattr(learner.Scheduler, name)) == \
            inspect.signature(getattr(reference.Scheduler, name)), name
    assert [f.name for f in fields(learner.SchedulerOutput)] == [f.name for f in fields(reference.SchedulerOutput)]
