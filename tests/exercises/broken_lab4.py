"""A deliberately wrong Lab 4 implementation: the grader must fail it (see test_lab4_tensor_parallel.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from labs.core.mini.config import ModelShape
from labs.lab4_tensor_parallel import solution as reference


def shard_column_parallel(weight: torch.Tensor, bias: torch.Tensor | None, rank: int,
                          world_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    # Classic mistake: every world_size-th row (interleaved), not a contiguous block of rows.
    return weight[rank::world_size].contiguous(), None if bias is None else bias[rank::world_size].contiguous()


def shard_row_parallel(weight: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    return weight[:, rank::world_size].contiguous()  # the same mistake on the columns


def sharded_mlp_forward(x: torch.Tensor, gate_proj: torch.Tensor, up_proj: torch.Tensor,
                        down_proj: torch.Tensor, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    # Reduces the intermediate too, "to be safe": sums different features of different ranks.
    intermediate = all_reduce(F.silu(x @ gate_proj.T) * (x @ up_proj.T))
    return all_reduce(intermediate @ down_proj.T)


def num_kv_heads_per_rank(num_kv_heads: int, world_size: int) -> int:
    return num_kv_heads // world_size  # 0 KV heads once ranks outnumber them: forgets replication


def num_params_per_rank(shape: ModelShape, world_size: int) -> int:
    kv_size = num_kv_heads_per_rank(shape.num_key_value_heads, world_size) * shape.head_dim
    right_kv_size = reference.num_kv_heads_per_rank(shape.num_key_value_heads, world_size) * shape.head_dim
    # the reference count, with this file's (wrong) KV heads per rank
    return reference.num_params_per_rank(shape, world_size) - 2 * shape.num_hidden_layers * (right_kv_size - kv_size) * (
        shape.hidden_size + 1)
