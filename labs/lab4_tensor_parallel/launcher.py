"""Start `world_size` real processes, one per rank, join them into a process group, collect results.

Why processes and not threads: that is what tensor parallelism is (vLLM starts one worker process
per GPU, or per CPU socket). Why the "spawn" start method: it works the same from a script, from
pytest and from a Jupyter kernel (the task must then live in an importable module, not a cell),
and CUDA cannot be used in forked children. Results come back pickled to bytes, so the ranks may
exit as soon as they are sent.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue as queue_module
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from labs.core.errors import WorkbookError
from labs.lab4_tensor_parallel.comm import DEBUG_RANKS_ENV, maybe_listen_for_debugger, rank_placement
from labs.core.debug.ports import check_debug_ports_free

DEFAULT_TIMEOUT_S = 180  # two ranks import torch and run a tiny model: ~10 s here; generous for loaded CI
RankTask = Callable[..., Any]  # task(rank, world_size, placement, *args) -> picklable result


class RankFailedError(WorkbookError):
    """A rank raised or died; the message carries that rank's own traceback."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, task: RankTask, args: tuple[Any, ...],
               results: Any) -> None:
    """Body of every rank process: debugger (if asked), process group, the task, clean exit."""
    try:
        maybe_listen_for_debugger(rank)
        placement = rank_placement(rank, world_size)
        if placement.num_threads is not None:
            torch.set_num_threads(placement.num_threads)  # ranks share the machine's cores, not fight over them
        if placement.device.startswith("cuda"):
            torch.cuda.set_device(placement.device)
        dist.init_process_group(placement.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=DEFAULT_TIMEOUT_S))
        try:
            result = task(rank, world_size, placement, *args)
        finally:
            dist.destroy_process_group()
        results.put((rank, True, pickle.dumps(result)))
    except BaseException:  # noqa: BLE001 - the parent reports it with this rank's traceback
        results.put((rank, False, traceback.format_exc()))


def run_ranks(task: RankTask, args: tuple[Any, ...] = (), world_size: int = 2,
              timeout_s: float | None = DEFAULT_TIMEOUT_S) -> list[Any]:
    """Run `task(rank, world_size, placement, *args)` in `world_size` processes; return results by rank.

    Args:
        task: a function defined in an importable module (spawned processes import it by name).
        args: picklable arguments, the same for every rank.
        world_size: number of ranks (processes).
        timeout_s: give up after this long; None waits forever (used while ranks wait for a debugger).

    Raises:
        RankFailedError: a rank raised (its traceback is in the message) or exited without a result.
        DebugPortInUseError: with WORKBOOK_DEBUG_RANKS=1, a rank's debugger port is taken (the
            message names the process holding it).
    """
    if getattr(task, "__module__", "__main__") == "__main__":
        raise WorkbookError(f"{task.__name__} is defined in __main__ (a notebook cell or a script): spawned "
                            "ranks cannot import it. Put it in a module, e.g. labs/lab4_tensor_parallel/.")
    if os.environ.get(DEBUG_RANKS_ENV) == "1":
        timeout_s = None  # a person at a breakpoint is not a hang
        # Here, not only in each rank: one sentence naming the holder, before any rank starts,
        # rather than a failed rank's traceback while the other waits for its debugger.
        check_debug_ports_free(range(world_size), who="rank")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(rank, world_size, port, task, args, results),
                         name=f"tp-rank-{rank}", daemon=True) for rank in range(world_size)]
    for proc in procs:
        proc.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    collected: dict[int, Any] = {}
    try:
        while len(collected) < world_size:
            try:
                rank, ok, payload = results.get(timeout=0.5)
            except queue_module.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RankFailedError(f"{dead[0].name} died with exit code {dead[0].exitcode} before sending "
                                          "its result (killed for memory? see its output above).") from None
                if deadline is not None and time.monotonic() > deadline:
                    raise RankFailedError(f"ranks did not finish within {timeout_s:.0f} s "
                                          f"(results from ranks {sorted(collected)} only).") from None
                continue
            if not ok:
                raise RankFailedError(f"rank {rank} failed:\n{payload}")
            collected[rank] = pickle.loads(payload)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():  # a rank stuck in a collective after another failed
                proc.kill()
                proc.join()
    return [collected[rank] for rank in range(world_size)]
