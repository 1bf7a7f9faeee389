"""Lab 4 exercises: tensor parallelism, Megatron-style (what vLLM's *ParallelLinear layers do).

A linear layer computes `y = x W^T + b`, W of shape (out_features, in_features). Split it over
`world_size` ranks so that each rank stores and multiplies only its share of W.

Run `make grade LAB=4`: tests/exercises/test_lab4_tensor_parallel.py checks your shards against
the checkpoint, runs your sharded MLP in 2 real processes (gloo on the CPU) and compares it with
the one-process MLP, counts your all-reduces, and compares your parameter count with the shapes
the workbook's TP layers really build on every rank.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from labs.core.mini.config import ModelShape

VOCAB_PADDING = 64  # vLLM pads the vocabulary to a multiple of 64 before splitting it over ranks


def shard_column_parallel(weight: torch.Tensor, bias: torch.Tensor | None, rank: int,
                          world_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rank `rank`'s share of a column-parallel linear layer.

    Hints:
    - Column-parallel splits the OUTPUT features: rank r keeps a contiguous block of rows of W
      (and the same entries of b). Every rank still reads all of x.
    - Raise ValueError if out_features does not divide by world_size.
    - Return contiguous tensors (`.contiguous()`): a slice view keeps the whole matrix alive.

    Args:
        weight: (out_features, in_features), the whole layer.
        bias: (out_features,) or None.
        rank: 0 .. world_size - 1.
        world_size: number of ranks; must divide out_features.

    Returns:
        (weight shard (out_features / world_size, in_features), bias shard or None).
    """
    raise NotImplementedError("Exercise 1: column-parallel shard")


def shard_row_parallel(weight: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s share of a row-parallel linear layer: (out_features, in_features / world_size).

    Hints:
    - Row-parallel splits the INPUT features: rank r keeps a contiguous block of columns of W.
      Its output is a partial sum of full width; the ranks' partial sums add up to x W^T.
    - The bias is not split (it would be added world_size times): it is added after the reduce.
    """
    raise NotImplementedError("Exercise 2: row-parallel shard")


def sharded_mlp_forward(x: torch.Tensor, gate_proj: torch.Tensor, up_proj: torch.Tensor,
                        down_proj: torch.Tensor, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """One rank's SwiGLU MLP, `down(silu(gate(x)) * up(x))`, with gate/up column- and down row-parallel.

    Hints:
    - Which intermediate features does this rank have? Exactly those its down_proj columns read,
      so silu(gate) * up needs no communication: both are elementwise.
    - Place the all-reduce where the ranks' results are partial sums, and call it exactly once:
      every extra reduce is a round trip between GPUs on every token of every layer.

    Args:
        x: (num_tokens, hidden_size), the same on every rank.
        gate_proj: (intermediate_size / world_size, hidden_size), this rank's rows.
        up_proj: (intermediate_size / world_size, hidden_size), this rank's rows.
        down_proj: (hidden_size, intermediate_size / world_size), this rank's columns.
        all_reduce: sums a tensor over all ranks (in place) and returns it.

    Returns:
        (num_tokens, hidden_size), the full MLP output, the same on every rank.
    """
    raise NotImplementedError("Exercise 3: sharded MLP with one all-reduce")


def num_kv_heads_per_rank(num_kv_heads: int, world_size: int) -> int:
    """KV heads one rank holds (GQA).

    Hint: with at least as many KV heads as ranks they are split; with fewer (2 KV heads over 4
    ranks) every rank still needs the one KV head its query heads read, so it keeps a copy.
    """
    raise NotImplementedError("Exercise 4a: KV heads per rank")


def num_params_per_rank(shape: ModelShape, world_size: int) -> int:
    """Parameters one rank holds when a Qwen2 model is split over `world_size` ranks (vLLM's layout).

    Hints:
    - Embedding: the vocabulary padded up to a multiple of VOCAB_PADDING, split over the ranks.
      With tie_word_embeddings the LM head IS the embedding (count it once); else it is split too.
    - Per layer: q_proj (query heads split) and k_proj/v_proj (num_kv_heads_per_rank) have
      biases; o_proj has none and is row-parallel; gate/up/down split intermediate_size.
    - Replicated on every rank: input_layernorm, post_attention_layernorm, the final norm.

    Args:
        shape: the model's config.json fields (`ModelShape.from_model_dir`).
        world_size: number of ranks.
    """
    raise NotImplementedError("Exercise 4b: parameters per rank")
