"""Benchmark: two in-process CPU engines side by side, with and without the workbook's thread sizing.

    .venv/bin/python tests/bench_in_process_threads.py [--repeats 3]

Each engine runs in a process of its own (as two notebooks, or two pytest workers, do) with the
engine core in that process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), and times the same greedy
generation. Three set-ups, in one run so the ratios compare like with like on a noisy machine:

- alone: one engine, `VLLM_CPU_OMP_THREADS_BIND=0` (one core's worth of threads).
- pair, bound: two engines at once, bound to cores 0 and 1; `make_llm` sizes each one's OpenMP
  pool to its binding (`labs.core.engine_settings.in_process_num_threads`).
- pair, unbound: two engines at once with `nobind`, so each keeps torch's default, one thread per
  core: what an in-process engine gets when nothing sizes its pool, because vLLM applies the
  binding only to the worker processes it starts itself.

Prints seconds per set-up and the pair/alone ratios: near 1 means the engines do not disturb each
other; on 2 cores the unbound pair took 4-7x as long as one engine alone (once 77x), the bound one 1.1x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_PROMPTS, PROMPT_LEN, MAX_TOKENS = 8, 64, 256  # ~2k decode tokens: a few seconds on one core


def child() -> None:
    """Build one engine, time one generation, print {"seconds": ...} as the last line."""
    from vllm import SamplingParams

    from labs.core.engine import make_llm

    llm = make_llm("tiny-phrasebook", verbose=False, max_num_seqs=NUM_PROMPTS)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    llm.generate([[5] * PROMPT_LEN], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    llm.generate([[5] * PROMPT_LEN] * NUM_PROMPTS, params, use_tqdm=False)
    print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
    os._exit(0)  # skip vLLM's teardown: only the timing matters here


def run_together(binds: list[str]) -> list[float]:
    """Start one child per binding at once; their generation seconds."""
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "ERROR", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env.pop("OMP_NUM_THREADS", None)
    procs = [subprocess.Popen([sys.executable, __file__, "--child"], cwd=REPO_ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env={**env, "VLLM_CPU_OMP_THREADS_BIND": bind}) for bind in binds]
    seconds = []
    for proc in procs:
        out, _ = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"a child engine failed (exit {proc.returncode}): {out[-2000:]}")
        seconds.append(json.loads(out.strip().splitlines()[-1])["seconds"])
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs 2 cores: the point is two engines on two cores")
    setups = {"alone": ["0"], "pair, bound": ["0", "1"], "pair, unbound": ["nobind", "nobind"]}
    results: dict[str, list[float]] = {name: [] for name in setups}
    for repeat in range(args.repeats):  # interleaved, so drift in the machine's load hits every set-up
        for name, binds in setups.items():
            results[name] += run_together(binds)
            print(f"repeat {repeat + 1}/{args.repeats} {name:14s} {' '.join(f'{s:.2f}' for s in results[name][-len(binds):])} s",
                  flush=True)
    alone = min(results["alone"])
    print(f"\n{NUM_PROMPTS} x {MAX_TOKENS} tokens, best of {args.repeats} repeat(s) per engine:")
    for name, seconds in results.items():
        print(f"  {name:14s} {min(seconds):7.2f} s   {min(seconds) / alone:5.1f}x alone   (worst {max(seconds):.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
