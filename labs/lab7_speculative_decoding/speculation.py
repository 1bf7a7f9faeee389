"""Lab 7 logic: n-gram speculative decoding on the live engine, step by step and against plain decoding.

One engine with `speculative_config={"method": "ngram", ...}` runs each workload three ways, on
the same weights and the same prompts: plain (the drafter proposes nothing), n-gram drafting,
and a drafter whose drafts are always wrong (every step verifies K + 1 tokens and keeps one: the
pure cost of verification). Each engine step is recorded from the scheduler (the drafts it
verified, the tokens it kept), and vLLM's own spec-decode counters are read beside.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import pandas as pd

from labs.core.model_traits import model_traits
from labs.core.models.phrasebook import load_phrasebook, translation_messages
from labs.core.models.prompt_format import PromptTemplate
from labs.core.vllm_internals.spec_decode import (
    SpecStep,
    drafter_off,
    drafter_replaced,
    record_spec_steps,
    spec_decode_counters,
)

# K = 3 drafts per step; a draft starts where the context's last 2..4 tokens occurred before.
NGRAM_CONFIG = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
MODES = ("plain", "ngram", "always wrong")


def make_spec_llm(model: str | None = None, speculative_config: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """An in-process engine that speculates with n-gram drafts and keeps vLLM's stats (its counters).

    Prefix caching is off: every run then prefills its prompts afresh, so the modes compared
    differ only in decoding. (With it on, a prompt cached whole by an earlier run is admitted with
    one token left to compute, and vLLM 0.32.0 pads that step with K placeholder drafts, -1, to keep
    the batch shape uniform for CUDA graphs; its counters count them as drafted and rejected.)
    """
    from labs.core.engine import make_llm

    settings = {"speculative_config": speculative_config or NGRAM_CONFIG, "disable_log_stats": False,
                "enable_prefix_caching": False, **kwargs}
    return make_llm(model, **settings)


def _chat(llm: Any, messages: list[dict[str, str]]) -> str:
    return llm.get_tokenizer().apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def repeating_prompts(llm: Any, num_prompts: int = 3) -> list[str]:
    """Requests whose answer is already in the prompt: a capstone chunk with a translation memory.

    The capstone's prompt format (a glossary in the system message, a few-shot example, one
    numbered paragraph) with the glossary holding whole sentence pairs, as a translation memory
    does: the model answers "[1] " + the Chinese the glossary already shows, so once its first
    tokens match a glossary line, n-gram lookup drafts the rest of the line.
    """
    entries = sorted(load_phrasebook(), key=lambda e: -len(e.zh))[:num_prompts]  # the longest answers
    template = PromptTemplate.load()
    memory = dataclasses.replace(template, glossary=tuple((e.ja, e.zh) for e in entries))
    return [_chat(llm, memory.chunk_messages([e.ja])) for e in entries]


def non_repeating_prompts(llm: Any, num_prompts: int = 3) -> list[str]:
    """Requests whose answer repeats nothing: plain phrasebook translations (Japanese in, Chinese out).

    The answer's tokens are Chinese; the prompt's are Japanese and an English instruction, so no
    2-token n-gram of the answer occurred before and the n-gram drafter has nothing to propose.
    """
    entries = sorted(load_phrasebook(), key=lambda e: -len(e.zh))[num_prompts:2 * num_prompts]
    return [_chat(llm, translation_messages(e.ja)) for e in entries]


def always_wrong_drafts(num_speculative_tokens: int, sampled_token_ids: Sequence[Any], *args: Any,
                        **kwargs: Any) -> list[list[int]]:
    """A drafter that proposes K copies of token 0 (a special token the model never emits) per request."""
    return [[0] * num_speculative_tokens for _ in sampled_token_ids]


@dataclass
class WorkloadRun:
    """One workload run once, in one mode: what came out, how long it took, every step it took."""

    workload: str
    mode: str
    seconds: float
    prompt_token_ids: list[list[int]]
    output_token_ids: list[list[int]]
    steps: list[SpecStep]
    counters: dict[str, Any]  # vLLM's spec-decode counters during the run (differences)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON), e.g. to carry a run out of the process that ran the engine."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkloadRun:
        return cls(**{**data, "steps": [SpecStep(**step) for step in data["steps"]]})

    @property
    def num_output_tokens(self) -> int:
        return sum(map(len, self.output_token_ids))

    def draft_records(self) -> list[tuple[int, int]]:
        """(num_draft_tokens, num_accepted_tokens) per request per step with drafts, as vLLM counts them."""
        return [(len(drafts), step.num_accepted(req_id))
                for step in self.steps for req_id, drafts in step.draft_token_ids.items() if drafts]


def run_workload(llm: Any, workload: str, prompts: list[str], params: Any, mode: str,
                 warm_up: bool = True) -> WorkloadRun:
    """Generate `prompts` in `mode` ("plain", "ngram" or "always wrong"), recording every step.

    With `warm_up`, a first, unrecorded pass warms the engine (the first steps of a new batch
    shape allocate and compile), so the recorded pass measures decoding.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: one of {MODES}")
    drafter = {"plain": drafter_off(llm), "ngram": nullcontext(),
               "always wrong": drafter_replaced(llm, always_wrong_drafts)}[mode]
    with drafter:
        if warm_up:
            llm.generate(prompts, params, use_tqdm=False)
        before = spec_decode_counters(llm)
        with record_spec_steps(llm) as steps:
            start = time.perf_counter()
            outputs = llm.generate(prompts, params, use_tqdm=False)
            seconds = time.perf_counter() - start
        after = spec_decode_counters(llm)
    counters = {k: (after[k] - before.get(k, 0.0)) if isinstance(after[k], float)
                else [a - b for a, b in zip(after[k], before.get(k) or [0.0] * len(after[k]))] for k in after}
    return WorkloadRun(workload, mode, seconds, [list(o.prompt_token_ids) for o in outputs],
                       [list(o.outputs[0].token_ids) for o in outputs], steps, counters)


def compare_modes(llm: Any, workloads: dict[str, list[str]], params: Any, modes: Sequence[str] = MODES,
                  repeats: int = 2) -> tuple[pd.DataFrame, dict[tuple[str, str], WorkloadRun]]:
    """Every workload in every mode, side by side, with ratios against plain decoding.

    Each (workload, mode) runs `repeats` times, the modes interleaved, and the fastest run is kept:
    greedy decoding takes the same steps every time, and on a shared machine other processes
    only ever add time, so the fastest run is the closest to the engine's own cost. The first
    round doubles as the warm-up (its runs pay for first-time allocations and are rarely kept).

    Returns:
        A table (one row per workload and mode) and the runs, keyed (workload, mode).
    """
    runs: dict[tuple[str, str], WorkloadRun] = {}
    for repeat in range(repeats):
        for name, prompts in workloads.items():
            for mode in modes:
                run = run_workload(llm, name, prompts, params, mode, warm_up=repeats == 1)
                if (name, mode) not in runs or run.seconds < runs[(name, mode)].seconds:
                    runs[(name, mode)] = run
    return comparison_table(runs), runs


def comparison_table(runs: dict[tuple[str, str], WorkloadRun]) -> pd.DataFrame:
    """One row per (workload, mode): steps, drafts, acceptance, steps saved and time, against plain."""
    rows = []
    for (name, mode), run in runs.items():
        plain = runs.get((name, "plain"), run)
        records = run.draft_records()
        drafted, accepted = sum(d for d, _ in records), sum(a for _, a in records)
        rows.append({"workload": name, "mode": mode, "steps": len(run.steps), "output_tokens": run.num_output_tokens,
                     "drafts": len(records), "draft_tokens": drafted, "accepted": accepted,
                     "acceptance_rate": accepted / drafted if drafted else float("nan"),
                     "mean_acceptance_length": 1 + accepted / len(records) if records else float("nan"),
                     "steps_saved": len(plain.steps) - len(run.steps), "ms": 1e3 * run.seconds,
                     "time_vs_plain": run.seconds / plain.seconds,
                     "same_tokens_as_plain": run.output_token_ids == plain.output_token_ids})
    return pd.DataFrame(rows)


def steps_table(run: WorkloadRun, tokenizer: Any, request_index: int = 0) -> pd.DataFrame:
    """One request's steps: the drafts each step verified, which were accepted, and what it kept."""
    req_ids = [r for r in dict.fromkeys(rid for s in run.steps for rid in s.num_scheduled_tokens)]
    req_id = req_ids[request_index]
    rows = []
    for i, step in enumerate(run.steps):
        if req_id not in step.num_scheduled_tokens:
            continue
        drafts, kept = step.draft_token_ids.get(req_id, []), step.sampled_token_ids.get(req_id, [])
        num_accepted = step.num_accepted(req_id)
        rows.append({"step": i, "tokens_computed": step.num_scheduled_tokens[req_id],
                     "drafts": tokenizer.convert_ids_to_tokens(drafts) if drafts else [],
                     "accepted": num_accepted, "kept": tokenizer.decode(kept), "num_kept": len(kept),
                     "ms": 1e3 * step.seconds})
    return pd.DataFrame(rows)


def step_cost(runs: dict[tuple[str, str], WorkloadRun]) -> pd.DataFrame:
    """Median step time of decode steps by the tokens each request verified in it (1 = plain decode).

    Why decode steps only: a step that prefills a prompt costs far more and says nothing about
    verification; the first step of each request is its prefill (left out by its token count).
    """
    by_tokens: dict[int, list[float]] = {}
    for run in runs.values():
        for step in run.steps:
            per_request = set(step.num_scheduled_tokens.values())
            if len(per_request) == 1 and (n := per_request.pop()) <= 8:  # every request verified n tokens
                by_tokens.setdefault(n, []).append(1e3 * step.seconds)
    rows = [{"tokens_per_request": n, "steps": len(ms), "median_step_ms": statistics.median(ms)}
            for n, ms in sorted(by_tokens.items())]
    table = pd.DataFrame(rows)
    if not table.empty and 1 in by_tokens:
        table["vs_one_token"] = table["median_step_ms"] / statistics.median(by_tokens[1])
    return table


def request_contexts(run: WorkloadRun, request_index: int = 0) -> list[tuple[int, list[int], list[int], list[int]]]:
    """(step, the request's tokens before the step, the drafts it verified, the tokens it kept), step by step.

    The tokens before a step are what the drafter saw when it proposed that step's drafts: the
    prompt plus every token kept so far. Hand them to vLLM's own n-gram function to see it propose
    exactly the recorded drafts.
    """
    req_id = list(dict.fromkeys(r for s in run.steps for r in s.num_scheduled_tokens))[request_index]
    context, out = list(run.prompt_token_ids[request_index]), []
    for i, step in enumerate(run.steps):
        if req_id in step.num_scheduled_tokens:
            kept = step.sampled_token_ids.get(req_id, [])
            out.append((i, list(context), step.draft_token_ids.get(req_id, []), kept))
            context += kept
    return out


def workload_note(llm: Any) -> str | None:
    """One sentence when the engine's model cannot show the repeating/non-repeating contrast (None: it can).

    Why: the contrast rests on the answer. tiny-phrasebook copies the prompt's glossary line and
    writes a fresh translation otherwise; a model that loops accepts drafts on any text.
    """
    traits = model_traits(llm)
    if traits.random_weights:
        return (f"{traits.name} has random weights: its answers repeat one token, so n-gram drafts are accepted on the "
                "'non-repeating' text too; the two workloads differ only for a model that translates (shown, not judged).")
    if not traits.knows_phrasebook:
        return (f"{traits.name} was not trained on the phrasebook: how much the 'repeating' workload gains depends on "
                "whether its answers copy the glossary in the prompt.")
    return None


def speed_summary(table: pd.DataFrame, cost: pd.DataFrame, num_speculative_tokens: int) -> list[str]:
    """The comparison as ratios, one line per workload, and the break-even of this CPU."""
    rows = table.set_index(["workload", "mode"])
    lines = []
    for workload in dict.fromkeys(table["workload"]):
        ngram, plain = rows.loc[(workload, "ngram")], rows.loc[(workload, "plain")]
        lines.append(f"{workload}: n-gram took {ngram.steps} steps instead of {plain.steps} "
                     f"(x{ngram.steps / plain.steps:.2f}), {ngram.accepted} of {ngram.draft_tokens} draft tokens "
                     f"accepted; time x{ngram.time_vs_plain:.2f} of plain decoding")
        if (workload, "always wrong") in rows.index:
            wrong = rows.loc[(workload, "always wrong")]
            lines.append(f"{workload}: always-wrong drafts: the same {wrong.steps} steps, time x{wrong.time_vs_plain:.2f}")
    by_tokens = cost.set_index("tokens_per_request")
    if {1, num_speculative_tokens + 1} <= set(by_tokens.index):
        ratio = by_tokens.loc[num_speculative_tokens + 1, "vs_one_token"]
        lines.append(f"this CPU: a decode step verifying {num_speculative_tokens + 1} tokens per request costs "
                     f"x{ratio:.2f} a one-token step, so speculation pays only while a verifying step keeps more "
                     f"than ~{ratio:.1f} tokens (the mean acceptance length)")
    return lines
