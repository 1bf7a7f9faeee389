"""What Lab 4 measures with the from-scratch layers: equal to one process, two reduces a block, time split.

The truth is Hugging Face transformers' Qwen2 in ONE process (not our code): forward hooks record
the input and output of every layer's attention, MLP and block on a real prompt. Each rank then
runs its share of the same module on the same input, and must produce the same output, after
exactly the all-reduces Megatron's recipe promises. Runs in float32 so that the only difference
left is the order of a sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from labs.lab4_tensor_parallel.comm import CountingAllReduce, RankPlacement, all_gather_last_dim
from labs.lab4_tensor_parallel.launcher import run_ranks
from labs.lab4_tensor_parallel.layers import build_rank_model


@dataclass
class Reference:
    """One process's view of a prompt, layer by layer (lists indexed by layer)."""

    token_ids: torch.Tensor  # (num_tokens,)
    attn_in: list[torch.Tensor] = field(default_factory=list)  # (num_tokens, hidden_size), after input_layernorm
    attn_out: list[torch.Tensor] = field(default_factory=list)
    mlp_in: list[torch.Tensor] = field(default_factory=list)  # after post_attention_layernorm
    mlp_out: list[torch.Tensor] = field(default_factory=list)
    block_in: list[torch.Tensor] = field(default_factory=list)
    block_out: list[torch.Tensor] = field(default_factory=list)
    logits: torch.Tensor | None = None  # (num_tokens, vocab_size)


def hf_reference(model_dir: str | Path, token_ids: list[int], hf_model: Any = None) -> Reference:
    """Run transformers' Qwen2 (float32, one process) on `token_ids`, recording every layer's I/O."""
    from transformers import AutoModelForCausalLM

    model = hf_model or AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ref = Reference(torch.tensor(token_ids))
    handles = []
    for layer in model.model.layers:
        def attn_hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            ref.attn_in.append(kwargs["hidden_states"][0].detach().clone())
            ref.attn_out.append(output[0][0].detach().clone())

        def mlp_hook(module: Any, args: Any, output: Any) -> None:
            ref.mlp_in.append(args[0][0].detach().clone())
            ref.mlp_out.append(output[0].detach().clone())

        def block_hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            ref.block_in.append(hidden[0].detach().clone())
            ref.block_out.append((output[0] if isinstance(output, tuple) else output)[0].detach().clone())

        handles += [layer.self_attn.register_forward_hook(attn_hook, with_kwargs=True),
                    layer.mlp.register_forward_hook(mlp_hook),
                    layer.register_forward_hook(block_hook, with_kwargs=True)]
    try:
        with torch.no_grad():
            ref.logits = model(ref.token_ids[None]).logits[0].float()
    finally:
        for handle in handles:
            handle.remove()
    return ref


def phrasebook_prompt_ids(model_dir: str | Path, index: int = 0) -> list[int]:
    """Token ids of the chat prompt tiny-phrasebook was trained on, for phrasebook entry `index`."""
    from transformers import AutoTokenizer

    from labs.core.models.phrasebook import load_phrasebook, translation_messages

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = translation_messages(load_phrasebook()[index].ja)
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def equivalence_task(rank: int, world_size: int, placement: RankPlacement, model_dir: str,
                     ref: Reference) -> dict[str, Any]:
    """One rank: run its share of every attention, MLP, block and the whole model on `ref`'s inputs."""
    reduce = CountingAllReduce(rank, placement.device)
    model = build_rank_model(model_dir, rank, world_size, reduce, lambda t: all_gather_last_dim(t, world_size),
                             device=placement.device)
    device = placement.device
    positions = torch.arange(len(ref.token_ids), device=device)
    out: dict[str, Any] = {"attn_out": [], "mlp_out": [], "block_out": [], "reduces": {}}
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            out["attn_out"].append(layer.self_attn(positions, ref.attn_in[i].to(device)).cpu())
            out["reduces"].setdefault("attention", []).append(reduce.reset().num_calls)
            out["mlp_out"].append(layer.mlp(ref.mlp_in[i].to(device)).cpu())
            out["reduces"].setdefault("mlp", []).append(reduce.reset().num_calls)
            out["block_out"].append(layer(positions, ref.block_in[i].to(device)).cpu())
            out["reduces"].setdefault("block", []).append(reduce.reset().num_calls)
        out["logits"] = model(ref.token_ids.to(device)).cpu()
    stats = reduce.reset()
    out["reduces"]["model"] = stats.num_calls
    out["model_call_sites"] = stats.call_sites
    out["param_shapes"] = {name: tuple(p.shape) for name, p in model.named_parameters()}
    out["num_params"] = sum(p.numel() for p in model.parameters())
    return out


def run_equivalence(model_dir: str | Path, token_ids: list[int], world_size: int = 2,
                    hf_model: Any = None) -> tuple[Reference, list[dict[str, Any]]]:
    """The reference in this process, then `world_size` real ranks on the same inputs."""
    ref = hf_reference(model_dir, token_ids, hf_model)
    return ref, run_ranks(equivalence_task, (str(model_dir), ref), world_size=world_size)


def max_abs_diff(rank_outputs: list[dict[str, Any]], ref: Reference) -> list[dict[str, Any]]:
    """One row per (layer, module): the largest |rank output - single process| over all ranks."""
    rows = []
    for what, truth in (("attention", ref.attn_out), ("mlp", ref.mlp_out), ("block", ref.block_out)):
        for i, expected in enumerate(truth):
            diff = max((out[f"{'attn' if what == 'attention' else what}_out"][i] - expected).abs().max().item()
                       for out in rank_outputs)
            rows.append({"layer": i, "module": what, "max |TP - 1 process|": diff,
                         "all-reduces per rank": [out["reduces"][what][i] for out in rank_outputs]})
    return rows


def timing_task(rank: int, world_size: int, placement: RankPlacement, model_dir: str, num_tokens: int,
                num_iters: int, dtype_name: str, num_threads: int | None) -> dict[str, float]:
    """One rank: time `num_iters` forwards of every block on `num_tokens` tokens; how much was all-reduce."""
    import time

    if num_threads is not None and placement.device == "cpu":
        torch.set_num_threads(num_threads)
    reduce = CountingAllReduce(rank, placement.device)
    model = build_rank_model(model_dir, rank, world_size, reduce, dtype=getattr(torch, dtype_name),
                             device=placement.device)
    gen = torch.Generator().manual_seed(0)  # the same input on every rank, as after a real embedding
    hidden = torch.randn(num_tokens, model.shape.hidden_size, generator=gen).to(placement.device, getattr(torch, dtype_name))
    positions = torch.arange(num_tokens, device=placement.device)
    with torch.no_grad():
        for layer in model.model.layers:  # warm-up: first calls allocate and pick kernels
            layer(positions, hidden)
        reduce.reset()
        started = time.perf_counter()
        for _ in range(num_iters):
            for layer in model.model.layers:
                layer(positions, hidden)
        if placement.device.startswith("cuda"):
            torch.cuda.synchronize()
        total = time.perf_counter() - started
    stats = reduce.reset()
    return {"rank": rank, "total_s": total, "all_reduce_s": stats.seconds, "compute_s": total - stats.seconds,
            "num_all_reduces": stats.num_calls, "all_reduce_bytes": stats.num_bytes,
            "num_blocks_run": num_iters * len(model.model.layers)}


def run_timing(model_dir: str | Path, world_size: int = 2, num_tokens: int = 256, num_iters: int = 20,
               dtype_name: str = "bfloat16", num_threads: int | None = None) -> list[dict[str, float]]:
    """Per-rank compute vs all-reduce time of the decoder blocks (world_size=1: the single-process baseline).

    Args:
        num_threads: CPU threads per rank; None: the placement's (cores / world_size). For a
            baseline that has what one rank has (one GPU vs two), give world_size=1 the
            threads of one rank of the run it is compared with.
    """
    return run_ranks(timing_task, (str(model_dir), num_tokens, num_iters, dtype_name, num_threads),
                     world_size=world_size)


def mlp_exercise_task(rank: int, world_size: int, placement: RankPlacement, impl_module: str, model_dir: str,
                      layer: int, x: torch.Tensor) -> dict[str, Any]:
    """One rank of Lab 4's graded MLP: the reference shards, the implementation's `sharded_mlp_forward`.

    Shards come from the reference so that a mistake in the shard exercises does not show up as
    an MLP failure too; the reduce is counted, so an extra or missing reduce shows.
    """
    from safetensors import safe_open

    from labs.core.grading import load_implementation, reference

    impl = load_implementation("lab4_tensor_parallel", impl_module)
    shard_column_parallel = reference("lab4_tensor_parallel").shard_column_parallel
    shard_row_parallel = reference("lab4_tensor_parallel").shard_row_parallel
    prefix = f"model.layers.{layer}.mlp."
    with safe_open(str(Path(model_dir) / "model.safetensors"), framework="pt") as f:
        full = {name: f.get_tensor(prefix + name + ".weight").float() for name in ("gate_proj", "up_proj", "down_proj")}
    gate, _ = shard_column_parallel(full["gate_proj"], None, rank, world_size)
    up, _ = shard_column_parallel(full["up_proj"], None, rank, world_size)
    down = shard_row_parallel(full["down_proj"], rank, world_size)
    reduce = CountingAllReduce(rank, placement.device)
    with torch.no_grad():
        out = impl.sharded_mlp_forward(x, gate, up, down, lambda t: reduce(t, "mlp"))
    return {"out": out, "num_all_reduces": reduce.stats.num_calls}
