"""`python -m labs.core.bench`: benchmark a running server and print vLLM's summary table.

Example (a server from `make vllm-start-bg`):

    python -m labs.core.bench --endpoint chat --num-prompts 50 --request-rate 4 --burstiness 1 \
        --input-len 64 --output-len 32 --goodput ttft:500 tpot:50 --save-result out.json
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

from labs.core.bench.runner import BenchmarkConfig, run_benchmark

TITLES = (("ttft", "TTFT", "Time to First Token"), ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
          ("itl", "ITL", "Inter-token Latency"), ("e2el", "E2EL", "End-to-end Latency"))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m labs.core.bench", description=__doc__.splitlines()[0])
    p.add_argument("--base-url", help="server root or /v1 URL (default: VLLM_BASE_URL, else http://127.0.0.1:8000)")
    p.add_argument("--model", help="served model name (default: VLLM_MODEL if served, else the server's first)")
    p.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    p.add_argument("--num-prompts", type=int, default=20)
    p.add_argument("--request-rate", type=float, default=math.inf, help="requests/s; inf (default) sends all at once")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of arrival gaps; 1 = Poisson")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--dataset", choices=("random", "fixed", "file"), default="random")
    p.add_argument("--dataset-path", help="prompts file for --dataset file (one per line, or JSONL with 'prompt')")
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--range-ratio", type=float, default=0.0)
    p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                   help="stop at EOS (output lengths then vary)")
    p.add_argument("--metric-percentiles", default="50,90,99", help="comma-separated, e.g. 50,90,99")
    p.add_argument("--goodput", nargs="+", default=(), metavar="NAME:MS", help="SLOs, e.g. ttft:500 tpot:50")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-warmups", type=int, default=1)
    p.add_argument("--save-result", help="write the result JSON (vLLM's keys) here")
    p.add_argument("--disable-tqdm", action="store_true")
    return p.parse_args(argv)


def summary_table(summary: dict[str, Any], config: BenchmarkConfig) -> str:
    """The summary laid out as `vllm bench serve` prints it."""
    lines = ["{:=^50}".format(" Serving Benchmark Result "),
             f"{'Successful requests:':<40} {summary['completed']:<10}",
             f"{'Failed requests:':<40} {summary['failed']:<10}"]
    if config.max_concurrency is not None:
        lines.append(f"{'Maximum request concurrency:':<40} {config.max_concurrency:<10}")
    if not math.isinf(config.request_rate):
        lines.append(f"{'Request rate configured (RPS):':<40} {config.request_rate:<10.2f}")
    lines += [f"{'Benchmark duration (s):':<40} {summary['duration']:<10.2f}",
              f"{'Total input tokens:':<40} {summary['total_input_tokens']:<10}",
              f"{'Total generated tokens:':<40} {summary['total_output_tokens']:<10}",
              f"{'Request throughput (req/s):':<40} {summary['request_throughput']:<10.2f}"]
    if summary.get("request_goodput") is not None:
        lines.append(f"{'Request goodput (req/s):':<40} {summary['request_goodput']:<10.2f}")
    lines += [f"{'Output token throughput (tok/s):':<40} {summary['output_throughput']:<10.2f}",
              f"{'Peak output token throughput (tok/s):':<40} {summary['max_output_tokens_per_s']:<10.2f}",
              f"{'Peak concurrent requests:':<40} {summary['max_concurrent_requests']:<10.2f}",
              f"{'Total token throughput (tok/s):':<40} {summary['total_token_throughput']:<10.2f}"]
    for key, name, header in TITLES:
        lines.append("{:-^50}".format(header))
        for stat in ("mean", "median"):
            lines.append(f"{f'{stat.capitalize()} {name} (ms):':<40} {summary[f'{stat}_{key}_ms']:<10.2f}")
        for p in config.percentiles:
            p_word = str(int(p)) if int(p) == p else str(p)
            lines.append(f"{f'P{p_word} {name} (ms):':<40} {summary[f'p{p_word}_{key}_ms']:<10.2f}")
    return "\n".join([*lines, "=" * 50])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = BenchmarkConfig(
        base_url=args.base_url, endpoint=args.endpoint, model=args.model, num_prompts=args.num_prompts,
        request_rate=args.request_rate, burstiness=args.burstiness, max_concurrency=args.max_concurrency,
        dataset=args.dataset, dataset_path=args.dataset_path, input_len=args.input_len, output_len=args.output_len,
        range_ratio=args.range_ratio, ignore_eos=args.ignore_eos,
        percentiles=tuple(float(p) for p in args.metric_percentiles.split(",")), goodput=tuple(args.goodput),
        seed=args.seed, num_warmups=args.num_warmups, disable_tqdm=args.disable_tqdm)
    result = run_benchmark(config)
    print(summary_table(result.summary, result.config))
    if args.save_result:
        print(f"saved: {result.save(args.save_result)}")
    return 0 if result.summary["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
