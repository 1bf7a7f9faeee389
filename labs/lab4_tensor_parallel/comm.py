"""The one collective tensor parallelism needs, counted and timed; and the process group it runs in.

Why our own wrapper around `torch.distributed.all_reduce`: Megatron-style TP puts exactly one
all-reduce after every row-parallel layer, so a transformer block makes two (after attention's
o_proj, after the MLP's down_proj). Every reduce in `labs.lab4_tensor_parallel.layers` goes through
a `CountingAllReduce`, so counting its calls counts the real collectives, and timing them splits
each rank's time into computing and communicating.

The backend follows the hardware (`labs.core.hardware.detect_hardware`): NCCL between GPUs, gloo
between CPU processes. Nothing CPU-only is hard-coded into the GPU path.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from labs.core.hardware import Hardware, detect_hardware
from labs.core.debug.listener import listen_for_debugger

DEBUG_RANKS_ENV = "WORKBOOK_DEBUG_RANKS"  # "1": every rank opens its own debugpy listener


@dataclass(frozen=True)
class RankPlacement:
    """Where a rank computes and how the ranks talk, chosen from the hardware.

    Attributes:
        backend: "nccl" (GPUs: reduces over NVLink/PCIe) or "gloo" (CPU processes: TCP/shared memory).
        device: the rank's device, "cuda:<rank>" or "cpu".
        num_threads: torch threads per rank on the CPU (cores split evenly, at least 1), so two
            ranks do not fight over the same cores; None on GPUs.
        reason: one sentence a learner can read.
    """

    backend: str
    device: str
    num_threads: int | None
    reason: str


def rank_placement(rank: int, world_size: int, hw: Hardware | None = None) -> RankPlacement:
    """Pick backend and device for `rank` of `world_size` from the detected hardware."""
    hw = hw or detect_hardware()
    if hw.device == "cuda" and len(hw.gpu_names) >= world_size:
        return RankPlacement("nccl", f"cuda:{rank}", None,
                             f"{len(hw.gpu_names)} GPUs: one per rank, NCCL all-reduce.")
    threads = max(1, hw.num_cpu_cores // world_size)
    return RankPlacement("gloo", "cpu", threads,
                         f"CPU ({hw.num_cpu_cores} cores): {world_size} processes x {threads} thread(s), gloo all-reduce.")


@dataclass
class ReduceStats:
    """What one rank's all-reduces cost: how many, how many bytes, how long (seconds)."""

    num_calls: int = 0
    num_bytes: int = 0
    seconds: float = 0.0
    call_sites: list[str] = field(default_factory=list)  # who asked, in order (e.g. "layers.0.mlp.down_proj")


class CountingAllReduce:
    """`dist.all_reduce(SUM)` that counts and times every call; the only reduce the TP layers use.

    Args:
        rank: this process's rank (kept as an attribute so a debugger shows whose reduce stopped).
        device: the rank's device; on CUDA the clock waits for the GPU (kernels are asynchronous).
        group: the process group; None is the default (world) group.
    """

    def __init__(self, rank: int, device: str = "cpu", group: dist.ProcessGroup | None = None) -> None:
        self.rank = rank
        self.device = torch.device(device)
        self.group = group
        self.stats = ReduceStats()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, tensor: torch.Tensor, call_site: str = "") -> torch.Tensor:
        """Sum `tensor` over all ranks, in place, and return it."""
        rank = self.rank  # a local, so a debugger stopped here shows which rank it is in
        if dist.get_world_size(self.group) == 1:
            return tensor  # one rank holds the whole sum already: nothing to communicate, nothing to count
        self._sync()  # time the reduce, not the matmuls still queued before it
        started = time.perf_counter()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)  # BREAKPOINT: the all-reduce
        self._sync()
        self.stats.seconds += time.perf_counter() - started
        self.stats.num_calls += 1
        self.stats.num_bytes += tensor.numel() * tensor.element_size()
        self.stats.call_sites.append(call_site or f"rank{rank}")
        return tensor

    def reset(self) -> ReduceStats:
        """Return the stats so far and start counting from zero."""
        stats, self.stats = self.stats, ReduceStats()
        return stats


def all_gather_last_dim(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate every rank's `tensor` along the last dim (vocab-parallel logits -> full logits)."""
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=-1)


def maybe_listen_for_debugger(rank: int) -> int | None:
    """With WORKBOOK_DEBUG_RANKS=1, open a debugpy listener for this rank; returns its port.

    Why one listener per rank: each rank is its own process with its own interpreter, and a
    debugger attaches to one process. VS Code's compound "Lab 4: attach to tensor-parallel ranks 0 and 1"
    attaches to 127.0.0.1:5679 and :5680 at once. Unless WORKBOOK_DEBUG_WAIT=0, the rank waits
    for its debugger before joining the process group, so no all-reduce runs unobserved.
    """
    if os.environ.get(DEBUG_RANKS_ENV, "0") != "1":
        return None
    return listen_for_debugger(rank, who=f"rank {rank}")
