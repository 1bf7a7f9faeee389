"""Detect the hardware we run on: CPU model and ISA flags, cores and NUMA nodes, memory, GPUs.

Why detection alone: what vLLM should do on this hardware is decided in
`labs.core.engine_settings`, from the `Hardware` this module returns; keeping the two apart lets
tests feed made-up machines to the decision, and keeps detection free of any engine or debug switch.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from labs.core.errors import WorkbookError

class UnsupportedHardwareError(WorkbookError):
    """A feature was asked for that this machine cannot run; the message says why and what to do."""


@dataclass(frozen=True)
class Hardware:
    """What we found on this machine.

    Attributes:
        device: "cuda" or "cpu".
        gpu_names: one name per visible CUDA device.
        cpu_model: the CPU's model name from /proc/cpuinfo.
        cpu_flags: ISA flags we care about (avx2, avx512f, amx_bf16, ...).
        num_cpu_cores: cores this process may run on (its affinity mask, not the machine total).
        numa_node_cpu_ids: NUMA node id -> the CPU ids on that node that we may use.
        total_memory_gib: physical memory.
    """

    device: str
    gpu_names: tuple[str, ...]
    cpu_model: str
    cpu_flags: frozenset[str]
    num_cpu_cores: int
    numa_node_cpu_ids: dict[int, list[int]] = field(hash=False)
    total_memory_gib: float

    @property
    def has_avx512(self) -> bool:
        return "avx512f" in self.cpu_flags

    @property
    def has_amx(self) -> bool:
        return bool({"amx_bf16", "amx_tile", "amx_int8"} & self.cpu_flags)

    def describe(self) -> str:
        """One line a learner can read: which device, and the facts that chose the settings."""
        if self.device == "cuda":
            return f"CUDA: {len(self.gpu_names)} x {self.gpu_names[0]}"
        isa = ", ".join(f for f in ("avx2", "avx512f", "amx_bf16") if f in self.cpu_flags) or "no AVX2"
        return (
            f"CPU: {self.cpu_model} ({self.num_cpu_cores} usable cores, "
            f"{len(self.numa_node_cpu_ids)} NUMA node(s), {isa}, {self.total_memory_gib:.0f} GiB RAM)"
        )


def _read_cpuinfo() -> tuple[str, frozenset[str]]:
    """Model name and ISA flags of the first CPU in /proc/cpuinfo (all cores share them)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or "unknown CPU"
    return model, frozenset(fields.get("flags", "").split())


def parse_cpu_list(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    cpu_ids: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpu_ids.extend(range(int(lo), int(hi or lo) + 1))
    return cpu_ids


def _numa_nodes(allowed: set[int]) -> dict[int, list[int]]:
    nodes: dict[int, list[int]] = {}
    for node_dir in sorted(Path("/sys/devices/system/node").glob("node[0-9]*")):
        try:
            cpu_ids = parse_cpu_list((node_dir / "cpulist").read_text())
        except OSError:
            continue
        usable = [c for c in cpu_ids if c in allowed]
        if usable:
            nodes[int(node_dir.name[4:])] = usable
    return nodes or {0: sorted(allowed)}


def _total_memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return 0.0


def _cuda_gpu_names() -> tuple[str, ...]:
    try:
        import torch
    except ImportError:
        return ()
    if not torch.cuda.is_available():
        return ()
    return tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))


def detect_hardware() -> Hardware:
    """Look at this machine once; cheap enough to call from every lab."""
    allowed = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cpu_model, cpu_flags = _read_cpuinfo()
    gpu_names = _cuda_gpu_names()
    return Hardware(
        device="cuda" if gpu_names else "cpu",
        gpu_names=gpu_names,
        cpu_model=cpu_model,
        cpu_flags=cpu_flags,
        num_cpu_cores=len(allowed),
        numa_node_cpu_ids=_numa_nodes(allowed),
        total_memory_gib=_total_memory_gib(),
    )
