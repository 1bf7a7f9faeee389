"""Real vLLM with tensor_parallel_size=2: the same greedy tokens as one worker, and what each rank holds.

`make_llm(tensor_parallel_size=2)` starts two worker processes (vLLM's MultiprocExecutor); on the
CPU, labs.core.hardware binds each to its own cores (VLLM_CPU_OMP_THREADS_BIND, e.g. "0|1"). Functions
that run INSIDE the workers (`_rank_facts`, `_rank_weights`) are module-level on purpose:
`LLM.collective_rpc`/`apply_model` pickle them by name, and a worker cannot import a notebook cell.

    python -m labs.lab4_tensor_parallel.vllm_tp --tp 2   # prints the tokens, per-rank shapes and memory
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from labs.core.hardware import detect_hardware
from labs.core.paths import REPO_ROOT

NUM_PROMPTS = 8  # phrasebook sentences; enough to show many different tokens, quick on 2 cores
MAX_TOKENS = 24  # longer than every phrasebook translation, so each ends on its own EOS


def tp_unsupported_reason(model_dir: str | Path, tensor_parallel_size: int) -> str | None:
    """Why vLLM cannot split this model's attention over `tensor_parallel_size` ranks, or None.

    vLLM splits attention by heads (`QKVParallelLinear`): the query heads must divide evenly over
    the ranks (`ModelConfig.verify_with_parallel_config`), and so must the KV heads, unless there
    are fewer KV heads than ranks, when the ranks must be a multiple of them (each KV head is then
    replicated). The notebook and script ask first, so a model that cannot be split gets this
    sentence instead of vLLM's traceback.

    Args:
        model_dir: the model folder (its config.json is read).
        tensor_parallel_size: the number of ranks.

    Returns:
        One sentence naming the head counts, or None when vLLM can split them.
    """
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():  # a hub id vLLM will download: its own check speaks then
        return None
    config = json.loads(config_path.read_text(encoding="utf-8"))
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    splits_kv = kv_heads % tensor_parallel_size == 0 if kv_heads >= tensor_parallel_size \
        else tensor_parallel_size % kv_heads == 0
    if heads % tensor_parallel_size == 0 and splits_kv:
        return None
    return (f"Tensor parallelism splits attention by heads, so the head counts must divide by the TP size: "
            f"{Path(model_dir).name} has {heads} query heads and {kv_heads} KV heads, which "
            f"tensor_parallel_size={tensor_parallel_size} cannot split.")


def greedy_token_ids(llm: Any, num_prompts: int = NUM_PROMPTS, max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    """Greedy completions of the first phrasebook prompts (the chat prompt the model was trained on)."""
    from vllm import SamplingParams

    from labs.core.models.phrasebook import load_phrasebook, translation_messages

    messages = [translation_messages(entry.ja) for entry in load_phrasebook()[:num_prompts]]
    outputs = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False)
    return [list(out.outputs[0].token_ids) for out in outputs]


def _rank_facts(worker: Any) -> dict[str, Any]:
    """Runs in each worker (collective_rpc): who it is, where its threads may run, its memory."""
    import psutil
    import torch.distributed as dist

    facts = {"rank": dist.get_rank() if dist.is_initialized() else 0, "pid": os.getpid(),
             "cpu_affinity": sorted(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
             "rss_bytes": psutil.Process().memory_info().rss}
    if torch.cuda.is_available():
        facts["cuda_allocated_bytes"] = torch.cuda.memory_allocated()
    return facts


def _rank_weights(model: torch.nn.Module) -> dict[str, Any]:
    """Runs in each worker (apply_model): its linear/embedding shares and its parameter count."""
    from labs.core import vllm_internals as vi

    layers = vi.tp_rank_weights(model)
    # Repacked linear weights show as (0,) parameters: count what the rank really multiplies by.
    recovered = sum(row["weight"].numel() for row in layers if row["how"] != "parameter")
    params = list(model.parameters())
    return {"layers": layers, "num_params": sum(p.numel() for p in params) + recovered,
            "weight_bytes": sum(p.numel() * p.element_size() for p in params)
            + sum(row["weight"].numel() * row["weight"].element_size() for row in layers if row["how"] != "parameter")}


def gpu_memory_balance() -> list[dict[str, Any]]:
    """Per-GPU memory in use, read by nvitop (NVML): the balance between TP ranks on GPUs."""
    from nvitop import Device

    return [{"gpu": d.index, "name": d.name(), "memory used": d.memory_used_human(),
             "memory total": d.memory_total_human(), "utilization %": d.gpu_utilization()} for d in Device.all()]


def run_tp(tensor_parallel_size: int, num_prompts: int = NUM_PROMPTS, max_tokens: int = MAX_TOKENS,
           model: str = "tiny-phrasebook", verbose: bool = True) -> dict[str, Any]:
    """Start an engine with `tensor_parallel_size` workers, generate greedily, read every rank, free it.

    Returns:
        token_ids (one list per prompt), start_s, bind (VLLM_CPU_OMP_THREADS_BIND or None),
        ranks (facts per worker) and weights (per-rank layers) when tensor_parallel_size > 1,
        gpu_memory on GPUs.
    """
    from labs.core.engine import free_llm, make_llm

    started = time.perf_counter()
    llm = make_llm(model, tensor_parallel_size=tensor_parallel_size, verbose=verbose)
    report: dict[str, Any] = {"tensor_parallel_size": tensor_parallel_size, "start_s": time.perf_counter() - started,
                              "bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND") if tensor_parallel_size > 1 else None}
    try:
        report["token_ids"] = greedy_token_ids(llm, num_prompts, max_tokens)
        report["ranks"] = llm.collective_rpc(_rank_facts)
        report["weights"] = llm.apply_model(_rank_weights)
        if detect_hardware().device == "cuda":
            report["gpu_memory"] = gpu_memory_balance()
    finally:
        free_llm(llm)
    return report


@functools.cache
def run_tp_in_subprocess(tensor_parallel_size: int, num_prompts: int = NUM_PROMPTS,
                         max_tokens: int = MAX_TOKENS, timeout_s: int = 420) -> dict[str, Any]:
    """`run_tp` in a fresh Python process (cached per session), so this process's engine is untouched.

    Why a subprocess: vLLM's distributed state is process-wide; a TP=2 engine beside another engine
    in one process (a test session's, a notebook's) cannot be started or freed independently.
    """
    with tempfile.TemporaryDirectory(prefix="vllm-tp-") as tmp:
        out = Path(tmp) / "report.pt"
        cmd = [sys.executable, "-m", "labs.lab4_tensor_parallel.vllm_tp", "--tp", str(tensor_parallel_size),
               "--num-prompts", str(num_prompts), "--max-tokens", str(max_tokens), "--save", str(out), "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              cwd=REPO_ROOT)
        if proc.returncode != 0 or not out.exists():
            from labs.core.errors import WorkbookError

            raise WorkbookError(f"vLLM with tensor_parallel_size={tensor_parallel_size} failed "
                                f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return torch.load(out, weights_only=False)


def rank_rows(report: dict[str, Any], layer: int = 0) -> list[dict[str, Any]]:
    """Readable rows: each rank's share of the embedding and of layer `layer`'s linear layers."""
    rows = []
    for rank, weights in enumerate(report["weights"]):
        for row in weights["layers"]:
            if row["name"].startswith("model.embed_tokens") or f"layers.{layer}." in row["name"]:
                rows.append({"rank": rank, "layer": row["name"], "vLLM class": row["kind"],
                             "whole (out, in)": tuple(row["full_shape"]), "this rank (out, in)": tuple(row["weight"].shape),
                             "split (out)": row["output_partition_sizes"], "read by": row["how"]})
    return rows


def memory_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-rank memory: per GPU from nvitop on GPUs; on the CPU each worker's weights and RSS.

    On the CPU the RSS includes each worker's KV cache (VLLM_CPU_KVCACHE_SPACE GiB each) and its
    own copy of torch/vLLM, so the weights are the number that halves with TP=2.
    """
    if report.get("gpu_memory"):
        return report["gpu_memory"]
    facts = {f["rank"]: f for f in report["ranks"]}
    return [{"rank": rank, "pid": facts[rank]["pid"], "cores": facts[rank]["cpu_affinity"],
             "torch threads": facts[rank]["torch_threads"], "parameters": w["num_params"],
             "weights (MiB)": round(w["weight_bytes"] / 2**20, 2), "RSS (MiB)": round(facts[rank]["rss_bytes"] / 2**20)}
            for rank, w in enumerate(report["weights"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--num-prompts", type=int, default=NUM_PROMPTS)
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    parser.add_argument("--save", help="torch.save the whole report here (used by run_tp_in_subprocess)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    report = run_tp(args.tp, args.num_prompts, args.max_tokens, verbose=not args.quiet)
    if args.save:
        torch.save(report, args.save)
    if not args.quiet:
        print(f"started in {report['start_s']:.1f} s; thread binding: {report['bind']}")
        for tokens in report["token_ids"]:
            print("  ", tokens)
        for facts in report["ranks"]:
            print(f"rank {facts['rank']}: pid {facts['pid']}, cores {facts['cpu_affinity']}, "
                  f"{facts['torch_threads']} torch threads, RSS {facts['rss_bytes'] / 2**20:.0f} MiB")
        for row in rank_rows(report):
            print("  ", row)
    return 0


if __name__ == "__main__":
    from labs.core.errors import run_main

    sys.exit(run_main(lambda: main()))
