"""Watch what the server's processes use while a benchmark runs: one call, CPU or GPU.

`monitor(server)` returns a `ResourceMonitor` for the server's process tree (the API server,
its engine core and workers are separate processes: one pid tells only part of the story).
On a machine with an NVIDIA GPU it also reads the GPU through nvitop (NVML): utilization and
the memory the server's processes hold; on a CPU-only machine those columns are NaN. The
columns are the same either way, so a notebook's plotting cell works on both.
"""

from __future__ import annotations

import ctypes.util
import math
from typing import Any

import pandas as pd
import psutil

from labs.core.bench.sampling import BackgroundSampler

COLUMNS = ("t_s", "backend", "num_processes", "cpu_percent", "rss_mib", "gpu_util_percent", "gpu_memory_mib")


def has_nvidia_gpu() -> bool:
    """True when NVML (the NVIDIA driver's management library) is present and sees a GPU.

    Why the library check first: importing nvitop on a CPU-only machine prints a FATAL ERROR
    banner about the missing NVML; asking the dynamic loader is silent.
    """
    if ctypes.util.find_library("nvidia-ml") is None:
        try:
            ctypes.CDLL("libnvidia-ml.so.1")
        except OSError:
            return False
    try:
        from nvitop import Device

        return Device.count() > 0
    except Exception:  # noqa: BLE001 - any NVML failure means: no usable GPU
        return False


def server_pid(target: Any) -> int:
    """A pid from an int, or from anything with `.pid` (`labs.core.serve.ServerStatus`, `ServerRecord`)."""
    pid = target if isinstance(target, int) else getattr(target, "pid", None)
    if pid is None:
        raise ValueError(f"no server process to monitor in {target!r} (a ServerStatus has a pid only for a "
                         "server started by labs.core.serve whose pid file is in the given log_dir)")
    return int(pid)


class ResourceMonitor(BackgroundSampler):
    """Samples a process tree's CPU and memory (and the GPU's, when there is one).

    Use:
        with monitor(serve.status(url)) as mon:
            run_benchmark(...)
        mon.df     # t_s, backend, num_processes, cpu_percent, rss_mib, gpu_util_percent, gpu_memory_mib

    `cpu_percent` is summed over the tree: 200 means two cores busy.
    """

    thread_name = "resource-monitor"

    def __init__(self, pid: int, interval_s: float = 0.25, use_gpu: bool | None = None) -> None:
        super().__init__(interval_s)
        self.root = psutil.Process(pid)
        self.use_gpu = has_nvidia_gpu() if use_gpu is None else use_gpu
        self._procs: dict[int, psutil.Process] = {}
        self.sample()  # primes cpu_percent: psutil measures CPU time between two calls

    def _tree(self) -> list[psutil.Process]:
        current = [self.root, *self.root.children(recursive=True)]
        # Keep the same Process objects: cpu_percent() is relative to that object's previous call.
        self._procs = {p.pid: self._procs.get(p.pid, p) for p in current}
        return list(self._procs.values())

    def _gpu(self, pids: set[int]) -> tuple[float, float]:
        from nvitop import Device

        util, memory = 0.0, 0.0
        for device in Device.all():
            util += device.gpu_utilization() or 0.0
            for pid, process in device.processes().items():
                if pid in pids:
                    memory += (process.gpu_memory() or 0) / 2**20
        return util, memory

    def sample(self) -> dict[str, Any]:
        """Take one sample now (also what the background thread does every `interval_s`)."""
        cpu, rss, alive = 0.0, 0.0, set()
        for proc in self._tree():
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)
                    rss += proc.memory_info().rss / 2**20
                alive.add(proc.pid)
            except psutil.NoSuchProcess:
                continue
        util, gpu_memory = self._gpu(alive) if self.use_gpu else (math.nan, math.nan)
        row = {"t_s": self.elapsed_s(), "backend": "gpu" if self.use_gpu else "cpu",
               "num_processes": len(alive), "cpu_percent": cpu, "rss_mib": rss,
               "gpu_util_percent": util, "gpu_memory_mib": gpu_memory}
        self.samples.append(row)
        return row

    @property
    def df(self) -> pd.DataFrame:
        return pd.DataFrame(self.samples, columns=list(COLUMNS))


def monitor(target: Any, interval_s: float = 0.25, use_gpu: bool | None = None) -> ResourceMonitor:
    """A resource monitor for a server: `target` is a pid or a `labs.core.serve.ServerStatus`.

    Args:
        target: the server's (API server's) pid, or its status (`serve.status(url)`).
        interval_s: seconds between samples while running as a context manager.
        use_gpu: force the GPU columns on/off; default: on when an NVIDIA GPU is visible.

    Returns:
        A `ResourceMonitor`; `.sample()` for one row now, `with ...:` to sample over a run, `.df`.
    """
    return ResourceMonitor(server_pid(target), interval_s, use_gpu)
