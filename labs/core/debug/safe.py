"""Make a script safe to run under a debugger. Call `prepare_debug_session(__file__)` first thing,
before anything imports vLLM.

Two hangs this prevents:

1. A paused engine-core process. vLLM's v1 engine runs its core (scheduler + model) in a second
   process by default. Under a debugger, debugpy injects itself into that process too, and
   pausing either side leaves the other waiting on a socket forever, and engine start-up can
   hang for good. With `VLLM_ENABLE_V1_MULTIPROCESSING=0` the core runs in this process, so
   a breakpoint in the scheduler or the model's `forward` is just a breakpoint.
2. A logging deadlock. Python's logging handlers hold a lock while writing. When the debugger
   pauses a vLLM thread inside `logger.info(...)` (it holds the stream handler's lock), and you
   then step over a line of your own that logs to the same console stream, your thread blocks on
   that lock forever. So under a debugger the script's own logger writes to its own file,
   `<script dir>/.logs/<script>.debug.log`, with its own lock, and never touches vLLM's handlers.

This module imports only the standard library, on purpose: importing it must not import vLLM.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from labs.core.debug.ipdb_safe import quicken_ipython_debugger, running_debugger  # standard library only, too

MULTIPROCESSING_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


def debugger_attached() -> bool:
    """True under debugpy (VS Code F5, `python -m debugpy`), pdb/ipdb, or any other trace-based debugger."""
    debugpy = sys.modules.get("debugpy")
    if debugpy is not None:
        try:
            if debugpy.is_client_connected():
                return True
        except Exception:  # an old or partial debugpy: fall through to the generic checks
            pass
    # `python -m pdb/ipdb`: bdb runs the script, even after `c` turned tracing off; a later
    # breakpoint() or Ctrl-C must still find the engine core in this process, with the terminal.
    return sys.gettrace() is not None or "pydevd" in sys.modules or running_debugger() is not None


def debug_log_path(script_file: str) -> Path:
    script = Path(script_file).resolve()
    return script.parent / ".logs" / f"{script.stem}.debug.log"


def prepare_debug_session(script_file: str, level: int = logging.INFO) -> logging.Logger:
    """Configure a script for debugging; returns the script's own logger.

    Args:
        script_file: the calling script's `__file__` (names the logger and the log file).
        level: level of the script's own logger.

    Returns:
        A logger that writes to the console normally, and only to the debug log file when a
        debugger is attached.
    """
    script = Path(script_file)
    logger = logging.getLogger(f"workbook.{script.stem}")
    logger.setLevel(level)
    logger.propagate = False  # never share a handler (and its lock) with vLLM's or the root logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()

    if "vllm" in sys.modules:
        logger.warning("vLLM was imported before prepare_debug_session(); its engine mode is already decided.")
    if not debugger_attached():
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        logger.addHandler(handler)
        return logger

    log_path = debug_log_path(script_file)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("", encoding="utf-8")  # a fresh log per run...
    # ...but opened in append mode: vLLM's logging set-up (dictConfig in LLM.__init__) closes every
    # existing handler, and only an append-mode FileHandler reopens its file on the next record.
    handler = logging.FileHandler(log_path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    if MULTIPROCESSING_ENV in os.environ:
        logger.info("debugger attached; %s=%s was set by you, left as is",
                    MULTIPROCESSING_ENV, os.environ[MULTIPROCESSING_ENV])
    else:
        os.environ[MULTIPROCESSING_ENV] = "0"
        logger.info("debugger attached; %s=0: the engine core runs in this process", MULTIPROCESSING_ENV)
    if quicken_ipython_debugger(running_debugger()):
        logger.info("ipdb: skip_predicates debuggerskip false, or vLLM's start-up takes minutes (labs/core/debug/ipdb_safe.py)")
    logger.info("this script's log: %s (vLLM's own logs still go to the console)", log_path)
    return logger
