"""Errors the workbook explains to its user, and the one place that prints them without a traceback.

Why a base class: a missing model, hardware that cannot run a feature, a wrong vLLM version or a
broken install are the user's to fix, and each message already says how; a traceback would bury
it. Command-line entry points wrap `main` in `run_main` so these print as one clear message.
"""

from __future__ import annotations

import sys
from typing import Callable


class WorkbookError(RuntimeError):
    """A problem with a clear, actionable message (no traceback needed)."""


def run_main(main: Callable[[], int]) -> int:
    """Run a CLI `main`; a `WorkbookError` becomes its message on stderr and exit status 2."""
    try:
        return main()
    except WorkbookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
