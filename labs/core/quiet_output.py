"""Run a command with the lines nobody reading its output can act on left out (`make demo`).

Why a child process and a line filter: these lines come from three places (vLLM's logger, Python's
warnings and torch's C++ code writing to file descriptor 2), and only a filter on the process's
output catches all three. The list is explicit, each entry with the reason it is noise for a
learner; anything not on it, including every warning a learner can act on, passes through.
`DEBUG=1` turns the filter off.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
from typing import IO

# (pattern, why a learner cannot act on it)
UNACTIONABLE: tuple[tuple[str, str], ...] = (
    (r"Unknown vLLM environment variable detected: VLLM_MODEL", "the workbook's own variable, read by labs.core.models"),
    (r"The global random seed is set to", "the workbook keeps the engine core in-process on purpose (labs.core.engine)"),
    (r"Enforce eager set, disabling torch\.compile", "the workbook's choice, printed with its reason ('why:')"),
    (r"Inductor compilation was disabled by user settings", "follows from enforce_eager, the workbook's choice"),
    (r"Triton is (not installed|installed, but doesn't include CPU backend)", "vLLM's CPU build runs without Triton"),
    (r"Model Runner V2 requires Triton", "the same: the V1 model runner is what the CPU backend uses"),
    (r"Reset SSM cache type to float32", "about Mamba-style models; the labs' models have none"),
    (r"NUMA binding: Using MEMBIND policy", "torch's note that memory stays on this machine's NUMA node"),
    (r"is not found in LD_PRELOAD", "tcmalloc/libiomp: measured +3-5% here, not worth a dependency"),
    (r"doesn't allow to use `torch\.set_num_threads` after the thread binding", "vLLM's own threads are bound already"),
    (r"Passing raw prompts to InputProcessor is deprecated", "from the workbook's step-by-step tracing, not yours"),
    (r"Kernel \S+ is already registered\. Overwriting", "vLLM registers its kernel overrides again for each engine of a process"),
    (r"Unknown vLLM environment variable detected: VLLM_DIST_IDENT", "set by vLLM's own CPU worker for the engine before"),
)
_PATTERN = re.compile("|".join(f"(?:{p})" for p, _ in UNACTIONABLE))
TRUTHY = frozenset({"1", "true", "yes", "on"})


def debug_requested() -> bool:
    """Whether the user asked for everything (`DEBUG=1`, `true`, `yes` or `on`), as the server manager reads it.

    Returns:
        True when nothing may be filtered out.
    """
    return (os.environ.get("DEBUG") or "").strip().lower() in TRUTHY


def is_unactionable(line: str) -> bool:
    """Whether `line` (or any carriage-return segment of it, as progress bars write) is on the list.

    Args:
        line: one line of output.

    Returns:
        True when it matches an `UNACTIONABLE` pattern.
    """
    return any(_PATTERN.search(segment) for segment in line.split("\r"))


class UnactionableLogFilter(logging.Filter):
    """Drops vLLM log records on the `UNACTIONABLE` list (for engines inside a notebook or script)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_unactionable(record.getMessage())


def quiet_vllm_logs() -> bool:
    """Leave unactionable lines out of vLLM's log in this process, unless `DEBUG=1`.

    Why a logging filter here and a line filter in `run_filtered`: an engine inside a notebook
    kernel logs through vLLM's own handlers in this process, so the filter goes on those handlers
    (a filter on the `vllm` logger itself would miss records of its child loggers), and stays on
    them when vLLM replaces them at an engine's start (`keep_vllm_handler_filter`). Python's
    warning about `torch.distributed.reduce_op`, which vLLM's import triggers, is left out too.

    Returns:
        Whether a filter is in place (False with `DEBUG=1`).
    """
    if debug_requested():
        return False
    from labs.core.vllm_internals.runtime import keep_vllm_handler_filter

    quiet_vllm_warnings()
    keep_vllm_handler_filter(UnactionableLogFilter)
    return True


def quiet_vllm_warnings() -> None:
    """Leave out Python's warning about `torch.distributed.reduce_op`: vLLM 0.32's own import and
    kernel scan trigger it, and nothing a learner can change does. Call it before importing vLLM
    to catch the import's."""
    import warnings

    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.reduce_op` is deprecated", category=FutureWarning)


def filter_lines(source: IO[str], sink: IO[str]) -> int:
    """Copy `source` to `sink` line by line, leaving out unactionable lines.

    Args:
        source: the child's output stream.
        sink: where the kept lines go.

    Returns:
        How many lines were left out.
    """
    dropped = 0
    for line in source:
        if is_unactionable(line):
            dropped += 1
            continue
        sink.write(line)
        sink.flush()
    return dropped


def run_filtered(argv: list[str], env: dict[str, str] | None = None) -> int:
    """Run `argv` with its stdout and stderr filtered into this process's stdout and stderr.

    Args:
        argv: the command.
        env: its environment (default: this process's), with PYTHONUNBUFFERED=1 added so its
            lines arrive as it writes them.

    Returns:
        The command's exit status.
    """
    child_env = {**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"}
    dropped = [0, 0]

    def pump(index: int, source: IO[str], sink: IO[str]) -> None:
        dropped[index] = filter_lines(source, sink)

    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env,
                          text=True, encoding="utf-8", errors="replace") as proc:
        assert proc.stdout is not None and proc.stderr is not None
        errors = threading.Thread(target=pump, args=(1, proc.stderr, sys.stderr), daemon=True)
        errors.start()
        try:
            pump(0, proc.stdout, sys.stdout)
            errors.join()
        except KeyboardInterrupt:
            proc.terminate()
            raise
        status = proc.wait()
    if sum(dropped):
        print(f"({sum(dropped)} lines of vLLM/torch start-up notes nobody needs to act on were left out; "
              "DEBUG=1 shows everything)")
    return status
