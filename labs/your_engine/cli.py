"""Your engine against vLLM: the mini engine built from your answers, token for token, on all 320 prompts.

    python -m labs.your_engine                         # your parts whose graders pass, else the reference
    python -m labs.your_engine --parts lab2_kv_cache   # these parts yours, no grading (all / none too)
    python -m labs.your_engine --parts lab2_kv_cache=my.module   # a part from any module

The mini engine (labs/core/mini) takes its KV cache manager (Lab 2), paged attention (Lab 2),
scheduler (Lab 3) and, with its MLPs split over 2 ranks, the shard functions and sharded MLP of
Lab 4 from the grading switch ($LABS_ENGINE, labs.core.grading.engine_part). A part
is yours only if that exercise's graded tests (tests/exercises/...) pass with LABS_GRADE=learner:
a half-done part would only make the comparison fail for a reason the graders already name.

Every phrasebook prompt, chat-rendered as the labs do, is generated greedily (max_tokens=48) by
the mini engine in four settings and by real vLLM (tiny-phrasebook), and the output tokens are
compared one by one:
    default            plenty of KV blocks, prefix caching off: plain continuous batching
    scarce-kv-blocks   12 KV blocks for up to 8 requests: requests are preempted and recomputed
    prefix-caching     prefix caching on, every prompt sent twice: the second finds the first's blocks
    tensor-parallel-2  every MLP split over 2 ranks (threads): Lab 4's shards, one all-reduce per MLP
Each prints "320/320 equal" or the first prompt (index and text) and output position where the
two part, with both tokens, and which of your parts were in play. vLLM's outputs are kept in
runs/your_engine/ (keyed by vLLM's version, the model's files, the prompts and max_tokens), so
only the first run starts vLLM; --fresh recomputes them.
"""

from __future__ import annotations

import argparse
import os

from labs.core.grading import ENGINE_ENV, parse_engine_setting
from labs.your_engine.compare import SETTINGS, compare, smoke
from labs.your_engine.parts import Parts, grade_parts, parse_parts
from labs.your_engine.reference import MAX_TOKENS, MODEL, load_reference, vllm_reference

LAB_PARTS: dict[int, tuple[str, ...]] = {2: ("lab2_kv_cache", "lab2_paged_attention"), 3: ("lab3_scheduler",),
                                         4: ("lab4_tensor_parallel",)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.your_engine", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=None,
                        help="which parts are yours, without grading: all, none, or e.g. "
                             "lab2_kv_cache,lab3_scheduler (part=module.path for any module); default: the parts "
                             "whose graders pass ($LABS_ENGINE, if set, is used as is)")
    parser.add_argument("--passed", default="",
                        help="parts known to pass their graders (not graded again), e.g. after make grade")
    parser.add_argument("--after-lab", type=int, default=None,
                        help="called by `make grade LAB=N` once lab N passes: its parts count as passed")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"among {', '.join(SETTINGS)}")
    parser.add_argument("--num-prompts", type=int, default=320, help="the first N phrasebook prompts (default all)")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    parser.add_argument("--fresh", action="store_true", help="recompute vLLM's outputs (not the kept ones)")
    parser.add_argument("--smoke", action="store_true",
                        help="make progress's check: a few prompts, against the reference mini engine (no vLLM)")
    parser.add_argument("--reference-file", default=None, help=argparse.SUPPRESS)  # tests: vLLM's outputs as JSON
    args = parser.parse_args(argv)

    if args.after_lab is not None and args.after_lab not in LAB_PARTS:
        print(f"Lab {args.after_lab} has no part in the mini engine (its parts: Lab 2's KV cache manager and "
              "paged attention, Lab 3's scheduler, Lab 4's tensor-parallel MLP), so there is no engine comparison "
              "for it.")
        return 0
    if args.parts is not None:
        parts = parse_parts(args.parts)
    elif os.environ.get(ENGINE_ENV):
        choices = parse_engine_setting(os.environ[ENGINE_ENV])
        parts = Parts(choices, {p: f"${ENGINE_ENV}" for p, c in choices.items() if c != "solution"})
    else:
        known = tuple(p for p in args.passed.split(",") if p.strip())
        known += LAB_PARTS.get(args.after_lab, ())
        parts = grade_parts("learner", known)
    if args.smoke:
        print(smoke(parts))
        return 0
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")

    if args.reference_file:
        reference = load_reference(args.reference_file)
    else:
        reference = vllm_reference(args.max_tokens, args.num_prompts, args.fresh)
    n = len(reference.output_token_ids)
    print(f"\nYour engine vs vLLM: {MODEL}, {n} phrasebook prompts, greedy, max_tokens={args.max_tokens}")
    print(f"Parts ({ENGINE_ENV}={parts.engine_setting}):\n{parts.describe()}\n")
    results = compare(parts, reference, settings, args.max_tokens)
    ok = all(r.ok for r in results)
    print(f"\n{'All equal' if ok else 'NOT all equal'}: your parts in play: {parts.in_play()}")
    return 0 if ok else 1

