"""Lab 7's hooks into vLLM's speculative decoding: the scheduler's draft tokens, the n-gram drafter,
the greedy verification rule and the acceptance counters, each as vLLM 0.32.0 has them.

Why here: the draft tokens a step verifies (`SchedulerOutput.scheduled_spec_decode_tokens`), the
tokens it kept (`ModelRunnerOutput.sampled_token_ids`), the drafter on the model runner, and the
numba/C++ functions the graders call are all internal. Labs and graders reach them by name here.

Paths (vLLM 0.32.0):
    vllm/v1/core/sched/scheduler.py      Scheduler.schedule (drafts -> scheduled_spec_decode_tokens),
                                         Scheduler.update_from_output (accepted = sampled - 1)
    vllm/v1/spec_decode/ngram_proposer.py NgramProposer.propose, _find_longest_matched_ngram_and_propose_tokens
    vllm/v1/sample/rejection_sampler.py  rejection_sample (greedy: rejection_greedy_sample_kernel;
                                         on CPU the C++ kernel vllm/utils/cpu_triton_utils.py registers)
    vllm/v1/spec_decode/metrics.py       SpecDecodingStats.observe_draft, SpecDecodingLogging.log
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from labs.core.vllm_internals.live_engine import llm_engine, model_runner, scheduler


@dataclass(frozen=True)
class SpecSettings:
    """The engine's speculative decoding settings, as vLLM resolved them (vllm/config/speculative.py)."""

    method: str
    num_speculative_tokens: int  # K: drafts proposed per request per step, at most
    prompt_lookup_min: int | None  # n-gram only: shortest suffix that may match
    prompt_lookup_max: int | None  # n-gram only: longest suffix tried
    max_model_len: int


def spec_settings(llm_or_engine: Any) -> SpecSettings | None:
    """The live engine's speculative config; None when it speculates not at all."""
    config = llm_engine(llm_or_engine).vllm_config
    spec = config.speculative_config
    if spec is None:
        return None
    return SpecSettings(str(spec.method), int(spec.num_speculative_tokens), spec.prompt_lookup_min,
                        spec.prompt_lookup_max, int(config.model_config.max_model_len))


@dataclass
class SpecStep:
    """One engine step as the scheduler saw it: what it verified for whom, and what came back.

    Attributes:
        seconds: from `schedule` to the end of `update_from_output` (forward, sampling,
            drafting and bookkeeping; not detokenization).
        num_scheduled_tokens: internal request id -> tokens computed this step (1 + its drafts).
        draft_token_ids: request id -> the draft tokens the step verified (absent: no drafts).
        sampled_token_ids: request id -> the tokens verification kept: the accepted drafts, then one
            token of the target's own (the recovered token at the first rejection, or the bonus).
            Read before vLLM cuts them at a stop token or max_tokens, as its counters count them.
    """

    seconds: float
    num_scheduled_tokens: dict[str, int]
    draft_token_ids: dict[str, list[int]] = field(default_factory=dict)
    sampled_token_ids: dict[str, list[int]] = field(default_factory=dict)

    def num_accepted(self, request_id: str) -> int:
        """Drafts accepted for `request_id`, counted as the scheduler counts them: kept - 1."""
        if request_id not in self.draft_token_ids:
            return 0
        return max(len(self.sampled_token_ids.get(request_id, [])) - 1, 0)


@contextmanager
def record_spec_steps(llm_or_engine: Any) -> Iterator[list[SpecStep]]:
    """Record every engine step while the block runs; the scheduler is restored on exit.

    Why wrap these two methods: `schedule` returns the `SchedulerOutput` (with
    `scheduled_spec_decode_tokens`, the drafts this step verifies) and `update_from_output`
    receives the `ModelRunnerOutput` (with `sampled_token_ids`, what verification kept); the
    engine's public outputs show neither. Only this scheduler instance changes, and only here.

    Yields:
        The list of `SpecStep`s, appended to as steps run.
    """
    sched = scheduler(llm_or_engine)
    steps: list[SpecStep] = []
    started: list[float] = []
    before = {name: vars(sched).get(name) for name in ("schedule", "update_from_output")}
    schedule, update = sched.schedule, sched.update_from_output

    def timed_schedule(*args: Any, **kwargs: Any) -> Any:
        started.append(time.perf_counter())
        return schedule(*args, **kwargs)

    def recording_update(scheduler_output: Any, model_runner_output: Any, *args: Any, **kwargs: Any) -> Any:
        # Read before vLLM's update: it cuts a request's kept tokens at a stop token or max_tokens,
        # after counting its accepted drafts from the whole list (which is what we record).
        index, sampled = model_runner_output.req_id_to_index, model_runner_output.sampled_token_ids or []
        kept = {req_id: [int(t) for t in sampled[index[req_id]]]
                for req_id in scheduler_output.num_scheduled_tokens if index.get(req_id, len(sampled)) < len(sampled)}
        drafts = {req_id: [int(t) for t in ids] for req_id, ids in scheduler_output.scheduled_spec_decode_tokens.items()}
        result = update(scheduler_output, model_runner_output, *args, **kwargs)
        steps.append(SpecStep(time.perf_counter() - (started.pop() if started else time.perf_counter()),
                              dict(scheduler_output.num_scheduled_tokens), drafts, kept))
        return result

    sched.schedule, sched.update_from_output = timed_schedule, recording_update
    try:
        yield steps
    finally:
        for name, value in before.items():
            if value is None:
                delattr(sched, name)  # back to the class's method
            else:
                setattr(sched, name, value)


@contextmanager
def drafter_replaced(llm_or_engine: Any, propose: Any) -> Iterator[None]:
    """Let `propose` stand in for the engine's drafter while the block runs; restored on exit.

    The drafter is the model runner's `drafter` (vllm/v1/worker/gpu_model_runner.py, which the CPU
    runner inherits; `NgramProposer` for method "ngram"). The runner calls
    `propose(num_speculative_tokens, sampled_token_ids, num_tokens_no_spec, token_ids_cpu, ...)`
    after each step and schedules what it returns, one list of draft token ids per request.
    Whatever the drafts, verification keeps only the target model's own greedy tokens.
    """
    drafter = getattr(model_runner(llm_or_engine), "drafter", None)
    if drafter is None:
        raise ValueError("this engine has no drafter: build it with speculative_config=...")
    before = vars(drafter).get("propose")
    drafter.propose = propose
    try:
        yield
    finally:
        if before is None:
            del drafter.propose
        else:
            drafter.propose = before


def _propose_nothing(num_speculative_tokens: int, sampled_token_ids: Sequence[Any], *args: Any,
                     **kwargs: Any) -> list[list[int]]:
    return [[] for _ in sampled_token_ids]


def drafter_off(llm_or_engine: Any) -> Any:
    """The engine's drafter proposes nothing while the block runs: plain decoding, same engine.

    Why: comparing against a second engine costs a start-up (10-20 s here) and a second copy of
    the weights; with no drafts the scheduler schedules one token per request and the model runner
    samples with the plain sampler, as an engine without `speculative_config` does.
    """
    return drafter_replaced(llm_or_engine, _propose_nothing)


SPEC_COUNTERS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                 "vllm:spec_decode_num_accepted_tokens")


def spec_decode_counters(llm: Any) -> dict[str, Any]:
    """vLLM's own spec-decode counters from `LLM.get_metrics()` (needs `disable_log_stats=False`).

    Why differences: the counters are Prometheus counters of this process, summed over its
    lifetime; take the values before and after a run and subtract.

    Returns:
        num_drafts, num_draft_tokens, num_accepted_tokens (floats) and num_accepted_tokens_per_pos
        (a list, one count per draft position), or {} when the engine keeps no stats.
    """
    out: dict[str, Any] = {}
    for metric in llm.get_metrics():
        if metric.name in SPEC_COUNTERS:
            out[metric.name.removeprefix("vllm:spec_decode_")] = float(metric.value)
        elif metric.name == "vllm:spec_decode_num_accepted_tokens_per_pos":
            out["num_accepted_tokens_per_pos"] = [float(v) for v in metric.values]
    return out


def vllm_ngram_propose(context_token_ids: Sequence[int], prompt_lookup_min: int, prompt_lookup_max: int,
                       num_speculative_tokens: int, max_model_len: int = 1 << 20) -> list[int]:
    """vLLM's n-gram drafter on one request's tokens: the function `NgramProposer` runs per request.

    `_find_longest_matched_ngram_and_propose_tokens` (numba, compiled on first call) is what
    `batch_propose_numba` calls for each request with its tokens so far (prompt + output).
    """
    import numpy as np
    from vllm.v1.spec_decode.ngram_proposer import _find_longest_matched_ngram_and_propose_tokens

    tokens = np.asarray(list(context_token_ids), dtype=np.int32)  # [num_tokens]
    drafts = _find_longest_matched_ngram_and_propose_tokens(tokens, prompt_lookup_min, prompt_lookup_max,
                                                            max_model_len, num_speculative_tokens)
    return [int(t) for t in drafts]


def _use_platform_kernels() -> None:
    """Route the rejection sampler's Triton kernels to the platform's (on CPU: C++), once.

    Why: a vLLM worker does this at start-up (`register_triton_kernel_overrides`); a grader with no
    engine must do it itself. vLLM's registration scans every module in `sys.modules` and, in
    0.32.0, fails on `llvmlite.binding.ffi` (whose `lib.__dict__` is not a dict), which numba
    (the n-gram drafter) imports: that module is left out of the scan.
    """
    from vllm.platforms import current_platform
    from vllm.triton_utils.dispatcher import KernelOverride
    from vllm.v1.sample import rejection_sampler

    if isinstance(getattr(rejection_sampler._rejection_greedy_sample, "kernel", None), KernelOverride):
        return  # done already (an engine's worker in this process, or an earlier call)
    hidden = sys.modules.pop("llvmlite.binding.ffi", None)
    try:
        current_platform.register_triton_kernel_overrides()
    finally:
        if hidden is not None:
            sys.modules["llvmlite.binding.ffi"] = hidden


def vllm_greedy_verify(draft_token_ids: Sequence[Sequence[int]], target_argmax: Sequence[Sequence[int]],
                       bonus_token_ids: Sequence[int], vocab_size: int | None = None) -> list[list[int]]:
    """vLLM's `rejection_sample` for all-greedy requests, on the given drafts and target argmaxes.

    Args:
        draft_token_ids: per request, its draft tokens (may be empty).
        target_argmax: per request, the target model's argmax at each draft position (same lengths).
        bonus_token_ids: per request, the target's token after the last draft (kept if all pass).
        vocab_size: for the logits built here; default: one more than the largest token id.

    Returns:
        Per request, the tokens vLLM keeps (as `RejectionSampler.parse_output` returns them).
    """
    from types import SimpleNamespace

    import torch
    from vllm.v1.sample.rejection_sampler import RejectionSampler, rejection_sample

    _use_platform_kernels()
    num_draft_tokens = [len(d) for d in draft_token_ids]
    flat_drafts = [int(t) for d in draft_token_ids for t in d]
    flat_argmax = [int(t) for a in target_argmax for t in a]
    if [len(a) for a in target_argmax] != num_draft_tokens:
        raise ValueError("target_argmax needs one token per draft token of each request")
    largest = max([*flat_drafts, *flat_argmax, *map(int, bonus_token_ids), 0])
    vocab_size = vocab_size or largest + 1
    logits = torch.zeros(len(flat_argmax), vocab_size)  # [num_tokens, vocab_size]: argmax = target
    if flat_argmax:
        logits[torch.arange(len(flat_argmax)), torch.tensor(flat_argmax)] = 1.0
    cu_num_draft_tokens = torch.tensor(num_draft_tokens, dtype=torch.int32).cumsum(0).to(torch.int32)
    greedy = SimpleNamespace(all_greedy=True, all_random=False, temperature=None, generators={})
    output = rejection_sample(
        torch.tensor(flat_drafts, dtype=torch.int32),  # [num_tokens]
        num_draft_tokens, max(num_draft_tokens, default=0), cu_num_draft_tokens,
        None,  # n-gram drafts have no probabilities
        logits,
        torch.tensor([[int(b)] for b in bonus_token_ids], dtype=torch.int64),  # [batch_size, 1]
        greedy)  # [batch_size, max_spec_len + 1], -1 where nothing was kept
    kept, _ = RejectionSampler.parse_output(output, vocab_size)
    return kept


def vllm_acceptance_summary(records: Sequence[tuple[int, int]], num_speculative_tokens: int) -> dict[str, Any]:
    """vLLM's acceptance figures for per-draft (num_draft_tokens, num_accepted_tokens) records.

    Each record goes through `SpecDecodingStats.observe_draft` (as `Scheduler.make_spec_decoding_stats`
    does for every request that verified drafts in a step), then `SpecDecodingLogging.log`, whose
    "SpecDecoding metrics" line is read back from its arguments.

    Returns:
        num_drafts, num_draft_tokens, num_accepted_tokens, acceptance_rate (0..1, nan without
        drafts), mean_acceptance_length (1 + accepted / drafts) and per_position_acceptance_rate.
    """
    import numpy as np
    from vllm.v1.spec_decode.metrics import SpecDecodingLogging, SpecDecodingStats

    stats = SpecDecodingStats.new(num_speculative_tokens)
    for num_draft_tokens, num_accepted in records:
        stats.observe_draft(num_draft_tokens=num_draft_tokens, num_accepted_tokens=num_accepted)
    logging = SpecDecodingLogging()
    logging.observe(stats)
    logged: list[tuple[Any, ...]] = []
    with np.errstate(divide="ignore", invalid="ignore"):  # no drafts: vLLM's 0/0 is nan
        logging.log(log_fn=lambda fmt, *args: logged.append(args))
        # the log line rounds the per-position rates to 3 digits: the same sum / num_drafts, unrounded
        per_position = np.sum(np.array([stats.num_accepted_tokens_per_pos]), axis=0) / np.sum([stats.num_drafts])
    mean_length, _, _, accepted, drafted, _, rate_percent = logged[0]
    return {"num_drafts": stats.num_drafts, "num_draft_tokens": int(drafted), "num_accepted_tokens": int(accepted),
            "acceptance_rate": float(rate_percent) / 100, "mean_acceptance_length": float(mean_length),
            "per_position_acceptance_rate": [float(r) for r in per_position]}
