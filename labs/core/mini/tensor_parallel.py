"""Tensor parallelism in one process: each MLP split over `world_size` ranks run as threads.

Why simulate: the point of Lab 4 in "your engine" is that the learner's shard functions and
sharded MLP, assembled into the engine, still give vLLM's tokens. Real ranks need processes and a
communicator (Lab 4's `launcher.py` does that); here each rank is a thread holding its own shards
(`shard_column_parallel` for gate/up, `shard_row_parallel` for down, from the grading switch), and
`all_reduce` is a barrier that sums the ranks' tensors in rank order, in place, as NCCL/gloo return
them. A rank that calls `all_reduce` a different number of times than the others would hang a real
job; here the barrier times out and says so.

Only the MLPs are split: attention over split heads would need one KV cache per rank, which the
mini engine's single paged cache does not have (vLLM's workers each own one).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from labs.core.grading import engine_part

ALL_REDUCE_TIMEOUT_S = 60.0  # far above one layer's MLP on a CPU; only a rank that never arrives waits this long


class ThreadAllReduce:
    """Sum-all-reduce between `world_size` threads: every rank blocks until all have contributed."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._barrier = threading.Barrier(world_size, timeout=ALL_REDUCE_TIMEOUT_S)
        self._tensors: list[torch.Tensor | None] = [None] * world_size

    def for_rank(self, rank: int):  # noqa: ANN201 (a Callable[[Tensor], Tensor])
        def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
            self._tensors[rank] = tensor
            try:
                self._barrier.wait()  # every rank's partial is in
                total = self._tensors[0].clone()
                for other in self._tensors[1:]:
                    total += other  # rank order: the same sum on every rank, as a real all-reduce gives
                self._barrier.wait()  # nobody overwrites its input before every rank has read it
            except threading.BrokenBarrierError:
                raise RuntimeError(f"all_reduce: rank {rank} waited {ALL_REDUCE_TIMEOUT_S:.0f} s for the other ranks: "
                                   "every rank must call all_reduce the same number of times (a real job hangs "
                                   "here)") from None
            tensor.copy_(total)
            return tensor
        return all_reduce


class ShardedMLP(nn.Module):
    """A Qwen2 SwiGLU MLP held as `world_size` shards and run by Lab 4's `sharded_mlp_forward`."""

    def __init__(self, gate_proj: torch.Tensor, up_proj: torch.Tensor, down_proj: torch.Tensor,
                 world_size: int, pool: ThreadPoolExecutor) -> None:
        """Args:
            gate_proj, up_proj: (intermediate_size, hidden_size), the whole layers.
            down_proj: (hidden_size, intermediate_size), the whole layer.
            world_size: number of simulated ranks.
            pool: threads to run the ranks on (shared by every layer: one step runs one layer at a time).
        """
        super().__init__()
        tp = engine_part("lab4_tensor_parallel")
        self.world_size = world_size
        self.pool = pool
        # Per rank: (intermediate_size / world_size, hidden_size) x 2, (hidden_size, intermediate_size / world_size)
        self.shards = [(tp.shard_column_parallel(gate_proj, None, r, world_size)[0],
                        tp.shard_column_parallel(up_proj, None, r, world_size)[0],
                        tp.shard_row_parallel(down_proj, r, world_size)) for r in range(world_size)]
        self._forward = tp.sharded_mlp_forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(num_tokens, hidden_size) -> (num_tokens, hidden_size); rank 0's result (all ranks agree)."""
        reduce = ThreadAllReduce(self.world_size)
        futures = [self.pool.submit(self._forward, x, *self.shards[r], reduce.for_rank(r))
                   for r in range(self.world_size)]
        outputs = [f.result() for f in futures]
        return outputs[0]


def shard_mlps(model: nn.Module, world_size: int) -> None:
    """Replace every decoder layer's `mlp` of `model` by a `ShardedMLP` over `world_size` ranks.

    The layers share one pool of rank threads; it lives as long as the model (its idle threads end
    when the model is freed).
    """
    pool = ThreadPoolExecutor(max_workers=world_size, thread_name_prefix="tp-rank")
    for layer in model.model.layers:
        mlp = layer.mlp
        layer.mlp = ShardedMLP(mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight, world_size, pool)
