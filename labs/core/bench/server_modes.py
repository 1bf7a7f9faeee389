"""Which process layout should the workbook's server use on a CPU with few cores? Measure, side by side.

vLLM's CPU server runs, by default, three processes: the API server, the engine core, and a worker
(the CPU platform turns TP=1's in-process `uni` executor into `mp`, to bind the worker's threads).
On 2 cores the engine core busy-waits on its worker during a step and the API server is left
~0.12 CPU-s per second, so streamed tokens arrive in bursts and the client's TTFT is not the
engine's. With the `uni` executor (`VLLM_ENABLE_V1_MULTIPROCESSING=0` keeps it on a CPU) the model
runs inside the engine core process, as it does on one GPU: two processes. The API server always
has an engine core process of its own: vLLM's async client has no in-process mode.

This script starts one server per layout, all at once on their own ports, and benchmarks them
alternately (A, B, A, B, ...), so that a busy moment of the machine weighs on both: output tokens
per second, and the client's mean TTFT against the server's own (its `/metrics` histogram's mean,
which is exact). It prints every run and the medians; the ratios are the result, not the absolutes.

    python -m labs.core.bench.server_modes [--rounds 3] [--num-prompts 16] [--input-len 64] [--output-len 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from labs.core import bench, serve

TTFT_HISTOGRAM = "vllm:time_to_first_token_seconds"
# The layouts compared: name -> (the executor, what the server's environment adds). An engine core
# that runs the model itself gets no thread binding from vLLM (only the workers it starts do):
# `engine_settings.server_executor` sizes its OpenMP pool to leave the API server a core (the
# workbook's default on a CPU); the third layout shows what that sizing is worth.
LAYOUTS: dict[str, tuple[str, dict[str, str]]] = {
    "worker process (executor mp, vLLM's CPU default)": ("mp", {}),
    "model in the engine core (executor uni, the workbook's CPU default)": ("uni", {}),
    "model in the engine core, one OpenMP thread per core": ("uni", {"OMP_NUM_THREADS": str(len(os.sched_getaffinity(0)))}),
}


def measure_once(url: str, num_prompts: int, input_len: int, output_len: int) -> dict[str, float]:
    """One all-at-once benchmark run against one server.

    Args:
        url: the server's root URL.
        num_prompts: requests sent, all at once.
        input_len: prompt tokens per request.
        output_len: output tokens per request.

    Returns:
        Output tokens/s, the client's and the server's mean TTFT (ms), and their ratio.
    """
    before = bench.snapshot(url)
    result = bench.run_benchmark(bench.BenchmarkConfig(base_url=url, num_prompts=num_prompts, input_len=input_len,
                                                       output_len=output_len, disable_tqdm=True))
    server = bench.delta(before, bench.snapshot(url)).histograms[TTFT_HISTOGRAM]
    client_ttft_ms, server_ttft_ms = result.df["ttft_ms"].mean(), server.mean * 1000
    return {"output tok/s": result.summary["output_throughput"], "client TTFT ms": client_ttft_ms,
            "server TTFT ms": server_ttft_ms, "client/server TTFT": client_ttft_ms / server_ttft_ms}


def main(argv: list[str] | None = None) -> int:
    """Start one server per layout, benchmark them alternately, print every run and the medians.

    Args:
        argv: the command line's arguments (default: `sys.argv[1:]`).

    Returns:
        The exit status (0); both servers are stopped however it ends.
    """
    parser = argparse.ArgumentParser(prog="python -m labs.core.bench.server_modes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--model", default=None, help="default: the labs' model (VLLM_MODEL)")
    args = parser.parse_args(argv)

    log_root = Path(tempfile.mkdtemp(prefix="server-modes-"))
    urls: dict[str, str] = {}
    try:
        for i, (name, (executor, env)) in enumerate(LAYOUTS.items()):
            port = serve.find_free_port()
            config = serve.build_config(args.model, port=port, log_dir=log_root / f"layout{i}",
                                        session_name=f"server-modes-{port}", executor=executor)
            serve.start_background(replace(config, engine_env={**config.engine_env, **env}), use_tmux=False)
            urls[name] = config.url
        rows: dict[str, list[dict[str, float]]] = {name: [] for name in LAYOUTS}
        for round_index in range(args.rounds):
            order = list(LAYOUTS) if round_index % 2 == 0 else list(reversed(LAYOUTS))
            for name in order:
                row = measure_once(urls[name], args.num_prompts, args.input_len, args.output_len)
                rows[name].append(row)
                print(f"round {round_index + 1}  {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()),
                      flush=True)
    finally:
        for i in range(len(LAYOUTS)):  # a Ctrl-C during a start leaves that one running too; stop is idempotent
            serve.stop(log_dir=log_root / f"layout{i}")
    print(f"\nMedians over {args.rounds} rounds ({args.num_prompts} requests of {args.input_len} + "
          f"{args.output_len} tokens, all at once):")
    medians = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in rows.items()}
    for name, m in medians.items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in m.items()))
    first, *others = medians
    for name in others:
        ratio = medians[name]["output tok/s"] / medians[first]["output tok/s"]
        print(f"  throughput ratio ({name} / {first}): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    from labs.core.errors import run_main

    sys.exit(run_main(main))
