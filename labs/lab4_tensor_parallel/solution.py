"""Reference solution for labs/lab4_tensor_parallel/exercise.py: Megatron-style tensor parallelism.

A linear layer `y = x W^T + b` with `W` of shape (out_features, in_features) can be split two ways:
- column-parallel: rank r keeps a slice of the OUTPUT features (rows of W, and of b); every rank
  needs all of x, and produces its own slice of y. No communication.
- row-parallel: rank r keeps a slice of the INPUT features (columns of W); it needs only its
  slice of x, and produces a PARTIAL y of full width. The partial ys must be summed: all-reduce.
Column then row (gate/up then down; q/k/v then o) needs one all-reduce per pair, because the
column layer's output slice is exactly the row layer's input slice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from labs.core.mini.config import ModelShape

VOCAB_PADDING = 64  # vLLM pads the vocabulary to a multiple of 64 before splitting it over ranks


def _split(size: int, rank: int, world_size: int, what: str) -> slice:
    if size % world_size:
        raise ValueError(f"{what}={size} does not split evenly over {world_size} ranks")
    per_rank = size // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


def shard_column_parallel(weight: torch.Tensor, bias: torch.Tensor | None, rank: int,
                          world_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rank `rank`'s share of a column-parallel linear layer.

    Args:
        weight: (out_features, in_features), the whole layer.
        bias: (out_features,) or None.
        rank: 0 .. world_size - 1.
        world_size: number of ranks; must divide out_features.

    Returns:
        (weight shard (out_features / world_size, in_features), bias shard or None).
    """
    rows = _split(weight.shape[0], rank, world_size, "out_features")
    return weight[rows].contiguous(), None if bias is None else bias[rows].contiguous()


def shard_row_parallel(weight: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s share of a row-parallel linear layer: (out_features, in_features / world_size).

    Its bias (if any) is not split: it is added once, after the all-reduce.
    """
    cols = _split(weight.shape[1], rank, world_size, "in_features")
    return weight[:, cols].contiguous()


def sharded_mlp_forward(x: torch.Tensor, gate_proj: torch.Tensor, up_proj: torch.Tensor,
                        down_proj: torch.Tensor, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """One rank's SwiGLU MLP, `down(silu(gate(x)) * up(x))`, with gate/up column- and down row-parallel.

    Args:
        x: (num_tokens, hidden_size), the same on every rank.
        gate_proj: (intermediate_size / world_size, hidden_size), this rank's rows.
        up_proj: (intermediate_size / world_size, hidden_size), this rank's rows.
        down_proj: (hidden_size, intermediate_size / world_size), this rank's columns.
        all_reduce: sums a tensor over all ranks (in place) and returns it.

    Returns:
        (num_tokens, hidden_size), the full MLP output, the same on every rank.
    """
    # silu is elementwise, so applying it to this rank's slice of gate(x) is exact: no reduce yet.
    intermediate = F.silu(x @ gate_proj.T) * (x @ up_proj.T)  # (num_tokens, intermediate_size / world_size)
    partial = intermediate @ down_proj.T  # (num_tokens, hidden_size): this rank's share of the sum
    return all_reduce(partial)  # the one reduce of the MLP


def num_kv_heads_per_rank(num_kv_heads: int, world_size: int) -> int:
    """KV heads one rank holds: split when there are enough, else each rank keeps one (replicated)."""
    return max(1, num_kv_heads // world_size)


def num_params_per_rank(shape: ModelShape, world_size: int) -> int:
    """Parameters one rank holds when a Qwen2 model is split over `world_size` ranks (vLLM's layout).

    Split: the vocabulary (padded to a multiple of 64), query heads, KV heads (replicated once
    there are more ranks than KV heads), the MLP's intermediate size. Replicated: the RMSNorm
    weights. A tied LM head is the embedding itself.
    """
    hidden, head_dim = shape.hidden_size, shape.head_dim
    padded_vocab = -(-shape.vocab_size // VOCAB_PADDING) * VOCAB_PADDING
    vocab_per_rank = padded_vocab // world_size
    embedding = vocab_per_rank * hidden * (1 if shape.tie_word_embeddings else 2)
    q_size = shape.num_attention_heads // world_size * head_dim
    kv_size = num_kv_heads_per_rank(shape.num_key_value_heads, world_size) * head_dim
    attention = (q_size + 2 * kv_size) * (hidden + 1) + hidden * q_size  # q/k/v with biases, o without
    mlp = 3 * hidden * (shape.intermediate_size // world_size)
    norms = 2 * hidden
    return embedding + shape.num_hidden_layers * (attention + mlp + norms) + hidden  # + the final norm
