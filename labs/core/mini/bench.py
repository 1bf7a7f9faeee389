"""Benchmark: the mini engine vs real vLLM vs Hugging Face `generate`, same trace, one run.

    python -m labs.core.mini.bench                      # all 320 phrasebook prompts, CPU or GPU
    python -m labs.core.mini.bench --num-prompts 64 --long-output-len 0

Two traces: the phrasebook chat prompts, greedy, stopping at EOS (short outputs: prefill-heavy),
and the same prompts with `ignore_eos` and a long fixed output length (decode-heavy). Each engine
runs each trace once after a small warm-up; the table gives output tokens/s and the peak memory
the engine added (process RSS, the engine-core child process included, on a CPU; device memory
in use on a GPU), and the ratios the issue set as goals: mini >= 0.5x vLLM and >= 3x HF.
Memory is dominated by what each engine reserves up front: the mini engine and vLLM a KV cache
(1 GiB on CPU; vLLM takes 85% of a GPU), vLLM its engine-core process; HF grows its cache per batch.
Nothing is asserted: numbers depend on the machine, and on what else runs on it.
"""

from __future__ import annotations

import argparse
import gc
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psutil
import torch

from labs.core.models import resolve_model
from labs.core.models.phrasebook import load_phrasebook, translation_messages

MODEL = "tiny-phrasebook"
GOAL_VS_VLLM = 0.5  # the goals, output-token throughput ratios
GOAL_VS_HF = 3.0


@dataclass
class Trace:
    name: str
    prompt_token_ids: list[list[int]]
    max_tokens: int
    ignore_eos: bool


@dataclass
class Result:
    trace: str
    engine: str
    output_token_ids: list[list[int]]
    elapsed_s: float
    peak_memory_bytes: int

    @property
    def num_output_tokens(self) -> int:
        return sum(len(ids) for ids in self.output_token_ids)

    @property
    def throughput(self) -> float:
        return self.num_output_tokens / self.elapsed_s


def _memory_in_use() -> int:
    """Device memory in use (GPU), or RSS of this process and its children (CPU: vLLM's engine core)."""
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()  # device-wide, so it sees other processes too
        return total - free
    process = psutil.Process()
    rss = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            rss += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return rss


@contextmanager
def peak_memory() -> Iterator[list[int]]:
    """Yields a one-element list that holds, on exit, the peak memory added since entry (sampled every 5 ms)."""
    baseline = _memory_in_use()
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], _memory_in_use())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = [0]
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result[0] = max(peak[0], _memory_in_use()) - baseline


def make_traces(tokenizer: Any, num_prompts: int, max_tokens: int, long_output_len: int) -> list[Trace]:
    messages = [translation_messages(e.ja) for e in load_phrasebook()[:num_prompts]]
    prompts = [tokenizer.encode(tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False),
                                add_special_tokens=False) for m in messages]
    traces = [Trace(f"phrasebook (greedy, <= {max_tokens} tokens, stop at EOS)", prompts, max_tokens, False)]
    if long_output_len:
        name = f"long outputs (greedy, {long_output_len} tokens, ignore EOS)"
        traces.append(Trace(name, prompts, long_output_len, True))
    return traces


def _timed(run: Callable[[], list[list[int]]]) -> tuple[list[list[int]], float]:
    start = time.perf_counter()
    output_token_ids = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return output_token_ids, time.perf_counter() - start


def bench_mini(traces: list[Trace], num_kv_blocks: int | None = None) -> list[Result]:
    from labs.core.mini.llm import LLM, SamplingParams

    results = []
    with peak_memory() as peak:
        llm = LLM(MODEL, num_kv_blocks=num_kv_blocks)
        for trace in traces:
            params = SamplingParams(temperature=0.0, max_tokens=trace.max_tokens, ignore_eos=trace.ignore_eos)
            llm.generate(trace.prompt_token_ids[:4], params, use_tqdm=False)  # warm-up
            outs, elapsed = _timed(lambda: llm.generate(trace.prompt_token_ids, params, use_tqdm=False))
            results.append(Result(trace.name, "mini", [o.outputs[0].token_ids for o in outs], elapsed, 0))
    del llm
    gc.collect()
    for r in results:
        r.peak_memory_bytes = peak[0]
    return results


def bench_vllm(traces: list[Trace], llm: Any = None) -> list[Result]:
    """Real vLLM; `llm` reuses an engine that is already running (then its start-up memory is not counted)."""
    from vllm import SamplingParams

    from labs.core.engine import free_llm, make_llm

    results = []
    own_engine = llm is None
    with peak_memory() as peak:
        if own_engine:  # engine core in its own process, as vLLM runs by default (faster)
            llm = make_llm(MODEL, inspectable=False, verbose=False)
        for trace in traces:
            params = SamplingParams(temperature=0.0, max_tokens=trace.max_tokens, ignore_eos=trace.ignore_eos)
            prompts = [{"prompt_token_ids": ids} for ids in trace.prompt_token_ids]
            llm.generate(prompts[:4], params, use_tqdm=False)  # warm-up
            outs, elapsed = _timed(lambda: [list(o.outputs[0].token_ids)
                                            for o in llm.generate(prompts, params, use_tqdm=False)])
            results.append(Result(trace.name, "vLLM", outs, elapsed, 0))
    if own_engine:
        free_llm(llm)
    for r in results:
        r.peak_memory_bytes = peak[0]
    return results


def bench_hf(traces: list[Trace], batch_size: int) -> list[Result]:
    """transformers `generate` in static batches of `batch_size` left-padded prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from labs.core.mini.config import Config

    path = resolve_model(MODEL).path
    config = Config(model=path, num_kv_blocks=1)  # only for the mini engine's dtype, device and threads
    if config.device == "cpu" and config.num_cpu_threads:
        torch.set_num_threads(config.num_cpu_threads)  # like for like: as many threads as the mini engine
    tokenizer = AutoTokenizer.from_pretrained(path)
    stop_ids = {tokenizer.eos_token_id}

    def generate(trace: Trace) -> list[list[int]]:
        outputs = []
        for start in range(0, len(trace.prompt_token_ids), batch_size):
            batch = tokenizer.pad({"input_ids": trace.prompt_token_ids[start:start + batch_size]},
                                  return_tensors="pt", padding_side="left").to(config.device)
            # eos_token_id=None is HF's ignore_eos: EOS is sampled like any token and does not stop.
            no_eos = {"eos_token_id": None} if trace.ignore_eos else {}
            generated = model.generate(**batch, max_new_tokens=trace.max_tokens, do_sample=False, **no_eos)
            for row in generated[:, batch["input_ids"].shape[1]:].tolist():
                # Rows that stopped early are padded: count tokens up to and including EOS.
                end = next((i + 1 for i, t in enumerate(row) if t in stop_ids), len(row))
                outputs.append(row if trace.ignore_eos else row[:end])
        return outputs

    results = []
    with peak_memory() as peak:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=config.torch_dtype).to(config.device).eval()
        for trace in traces:
            generate(Trace(trace.name, trace.prompt_token_ids[:4], trace.max_tokens, trace.ignore_eos))  # warm-up
            outs, elapsed = _timed(lambda: generate(trace))
            results.append(Result(trace.name, "HF generate", outs, elapsed, 0))
    del model
    gc.collect()
    for r in results:
        r.peak_memory_bytes = peak[0]
    return results


def format_report(results: list[Result]) -> str:
    """The table, then per trace the ratios and whether the goals are met."""
    header = f"{'trace':<50} {'engine':<12} {'requests':>8} {'out tokens':>10} {'time s':>8} {'tok/s':>9} " \
             f"{'peak MiB':>9} {'same tokens as vLLM':>20}"
    lines = [header, "-" * len(header)]
    by_key = {(r.trace, r.engine): r for r in results}
    for r in results:
        truth = by_key.get((r.trace, "vLLM"))
        same = "" if truth is None else \
            f"{sum(a == b for a, b in zip(r.output_token_ids, truth.output_token_ids))}/{len(r.output_token_ids)}"
        lines.append(f"{r.trace:<50} {r.engine:<12} {len(r.output_token_ids):>8} {r.num_output_tokens:>10} "
                     f"{r.elapsed_s:>8.2f} {r.throughput:>9.1f} {r.peak_memory_bytes / 2**20:>9.0f} {same:>20}")
    if any(r.trace.startswith("long") for r in results):
        lines.append("(Past an ignored EOS the model is off its training data and unsure: rounding differences "
                     "between engines flip near-ties, so fewer outputs agree there.)")
    lines.append("")
    lines.append("Ratios (mini / other; throughput = output tokens/s, memory = peak memory added):")
    for trace in dict.fromkeys(r.trace for r in results):
        mini = by_key.get((trace, "mini"))
        if mini is None:
            continue
        for other_name, goal in (("vLLM", GOAL_VS_VLLM), ("HF generate", GOAL_VS_HF)):
            other = by_key.get((trace, other_name))
            if other is None:
                continue
            ratio = mini.throughput / other.throughput
            memory_ratio = mini.peak_memory_bytes / max(other.peak_memory_bytes, 1)
            verdict = "met" if ratio >= goal else "NOT met"
            lines.append(f"  {trace:<50} mini/{other_name:<12} throughput {ratio:5.2f}x  "
                         f"(goal >= {goal}x: {verdict})  memory {memory_ratio:5.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None, vllm_llm: Any = None) -> list[Result]:
    """Run the benchmark and print the report.

    Args:
        argv: command-line arguments (default: sys.argv).
        vllm_llm: an already running `vllm.LLM` on tiny-phrasebook to reuse instead of starting one.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=320, help="phrasebook prompts per trace (<= 320)")
    parser.add_argument("--max-tokens", type=int, default=48, help="output limit of the phrasebook trace")
    parser.add_argument("--long-output-len", type=int, default=128, help="output length of the long trace (0: skip it)")
    parser.add_argument("--hf-batch-size", type=int, default=64, help="prompts per static batch of HF generate")
    parser.add_argument("--num-kv-blocks", type=int, default=None,
                        help="KV blocks of the mini engine (default: its 1 GiB budget, as vLLM's on CPU)")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MODEL).path)
    traces = make_traces(tokenizer, args.num_prompts, args.max_tokens, args.long_output_len)
    from labs.core.mini.config import Config

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"CPU (torch threads: {Config.num_cpu_threads} for mini and HF, Config.num_cpu_threads; vLLM sets its own)"
    print(f"Model {MODEL} on {device}; {len(traces[0].prompt_token_ids)} prompts per trace.", flush=True)
    results = (bench_mini(traces, args.num_kv_blocks) + bench_hf(traces, args.hf_batch_size)
               + bench_vllm(traces, vllm_llm))
    results.sort(key=lambda r: [t.name for t in traces].index(r.trace))  # group by trace, engines in run order
    print(format_report(results), flush=True)
    return results


if __name__ == "__main__":
    main()
