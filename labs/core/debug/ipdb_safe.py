"""`breakpoint()` in a vLLM process that has no terminal: one sentence saying what to do, not a crash.

The trap: a learner puts `breakpoint()` into vLLM's own code (say `Scheduler.schedule`) and runs
with `PYTHONBREAKPOINT=ipdb.set_trace`. By default vLLM's engine core runs in a second process
that `multiprocessing` started with stdin on /dev/null. ipdb (or pdb) there reads end-of-file at
its first prompt and quits: `bdb.BdbQuit` kills the engine core, and the learner sees a traceback
and "EngineCore died", or an engine that never answers, but not why.

What this module does: `register` is a vLLM general plugin (pyproject.toml,
`vllm.general_plugins`). vLLM calls general plugins in every process it starts, the engine core
included (`EngineCore.__init__`), so the fix reaches processes no workbook code runs in: a learner's
own script, a notebook's server, `python -m vllm.entrypoints.openai.api_server`. In the processes
vLLM starts, `sys.breakpointhook` becomes one that, where there is no terminal, prints one
sentence per `breakpoint()` line (how to get the engine core into a process with a terminal) and
lets the engine run on.

Why a plugin rather than `labs.core.debug.safe` setting `PYTHONBREAKPOINT`: debug_safe only runs in
the workbook's step scripts, and there it already keeps the engine core in-process under a
debugger; the processes that need the sentence are started by vLLM from code the workbook does
not control. Silencing `breakpoint()` (PYTHONBREAKPOINT=0) would hide the learner's breakpoint
without saying so.

What is left alone: the process that has the terminal (a `breakpoint()` there is a normal
ipdb session), `PYTHONBREAKPOINT=0`, debuggers that need no terminal (`debugpy.breakpoint`,
`remote_pdb.set_trace`, ...), and any hook someone else installed (debugpy's, IPython's).

Standard library only at import time: vLLM imports this in every process it starts.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from typing import Any

# Top-level modules whose set_trace reads commands from this process's stdin.
TERMINAL_DEBUGGERS = frozenset({"pdb", "ipdb", "pudb", "IPython", "pdbr", "bpdb"})

_explained: set[tuple[str, int]] = set()  # breakpoint() sites already explained in this process
_fork_hook_registered = False


def breakpoint_target() -> str:
    """What `breakpoint()` calls here: `PYTHONBREAKPOINT`, or Python's default `pdb.set_trace`.

    Returns:
        The dotted name, or "0" when breakpoints are disabled.
    """
    return os.environ.get("PYTHONBREAKPOINT", "").strip() or "pdb.set_trace"


def needs_terminal(target: str) -> bool:
    """True if the debugger `target` names would read its commands from stdin.

    Args:
        target: a dotted name as in PYTHONBREAKPOINT ("ipdb.set_trace", "pdb.set_trace").

    Returns:
        True for pdb-family debuggers; False for "0" and for anything else (remote debuggers).
    """
    return target.split(".", 1)[0] in TERMINAL_DEBUGGERS


def lacks_terminal() -> bool:
    """True in a process `multiprocessing` started (as vLLM starts its engine core and workers)
    whose stdin is not a terminal.

    Why only such children: the main process's stdin may be a pipe or a notebook kernel's
    input channel, and ipdb/pdb work there; a multiprocessing child's stdin is /dev/null.

    Returns:
        Whether an interactive debugger here could never read a command.
    """
    if multiprocessing.parent_process() is None:
        return False
    stdin = sys.stdin
    try:
        return stdin is None or stdin.closed or not stdin.isatty()
    except (AttributeError, ValueError):
        return True


def advice(process_name: str) -> str:
    """How to stop at a breakpoint that was reached in `process_name`.

    Args:
        process_name: the `multiprocessing` name of the process ("EngineCore", "VllmWorker-0", ...).

    Returns:
        The second half of the sentence: the command or setting that gives the breakpoint a terminal.
    """
    if process_name.startswith("VllmWorker"):  # tensor-parallel workers are never in the caller's process
        return ("a tensor-parallel worker cannot run in your process, so debug it with debugpy instead: "
                "WORKBOOK_DEBUG_VLLM_WORKERS=1 and attach (my_debug_scripts/README.md)")
    return ("run the engine core in your own process instead: VLLM_ENABLE_V1_MULTIPROCESSING=0 python "
            "your_script.py (a step script in my_debug_scripts/ under `python -m ipdb` does this by itself)")


def explain_breakpoint(*args: Any, **kwargs: Any) -> Any:
    """The `sys.breakpointhook` of a vLLM child process without a terminal.

    Prints one sentence per `breakpoint()` line (a breakpoint in `Scheduler.schedule` is reached
    every step; one sentence is enough) and returns, so the engine runs on. A process that does
    have a terminal, or a debugger that needs none, gets Python's own hook unchanged.

    Args:
        *args: passed on to Python's hook when it is used.
        **kwargs: passed on to Python's hook when it is used.

    Returns:
        What Python's hook returned when it was used, else None.
    """
    target = breakpoint_target()
    if target == "0":
        return None
    if not (needs_terminal(target) and lacks_terminal()):
        return sys.__breakpointhook__(*args, **kwargs)
    caller = sys._getframe(1)
    site = (caller.f_code.co_filename, caller.f_lineno)
    if site in _explained:
        return None
    _explained.add(site)
    name = multiprocessing.current_process().name
    print(f"breakpoint() at {os.path.basename(site[0])}:{site[1]} skipped: it ran in vLLM's process "
          f"{name!r} (pid {os.getpid()}), which has no terminal for {target} to read your commands from; "
          f"{advice(name)}.", file=sys.stderr, flush=True)
    return None


def running_debugger() -> Any | None:
    """The bdb-based debugger (pdb's, ipdb's, pudb's) that runs this script, or None.

    `python -m pdb/ipdb script.py` executes the script inside `bdb.Bdb.run`, so that frame is on
    the stack even while tracing is off (after `c` with no breakpoint set).

    Returns:
        The debugger instance (the `self` of `bdb.Bdb.run`), or None when none runs this code.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "bdb":
            return frame.f_locals.get("self")
        frame = frame.f_back
    return None


def quicken_ipython_debugger(debugger: Any) -> bool:
    """Turn off IPython's `debuggerskip` predicate in ipdb, as `skip_predicates debuggerskip false` does.

    Why: while a breakpoint is set, IPython's debugger checks on every Python call whether a parent
    frame holds `__debuggerskip__`, reading the locals of the whole stack (its cache holds 1,024
    frames); vLLM's start-up makes millions of calls. Measured here (IPython 9.18.1, ipdb 0.13.13):
    `from vllm.entrypoints.llm import LLM` took 260 s with a breakpoint set, 28 s with the
    predicate off, 16 s under plain pdb, 10 s without a debugger. Nothing in vLLM or torch sets
    `__debuggerskip__`, so nothing is lost (ipython/ipython#14382 and #14386 for the background).

    Args:
        debugger: from `running_debugger()`; None or a non-IPython debugger is left alone.

    Returns:
        True if the predicate was on and is now off.
    """
    predicates = getattr(debugger, "_predicates", None)
    if not (isinstance(predicates, dict) and predicates.get("debuggerskip")):
        return False
    debugger.do_skip_predicates("debuggerskip false")  # the command a person would type at the prompt
    return True


def _install_if_default() -> None:
    # Someone else's hook (debugpy's, IPython's) knows better than this one: leave it. So does a
    # debugger that needs no terminal (remote-pdb, web-pdb): wrapped, it would stop a frame too deep.
    if sys.breakpointhook is sys.__breakpointhook__ and needs_terminal(breakpoint_target()):
        sys.breakpointhook = explain_breakpoint


def register() -> None:
    """vLLM calls this (a general plugin) in every process it starts; also the main process.

    In a child process it installs the hook now. In the main process it only arranges for
    forked children to get it: a forked engine core (vLLM forks on GPUs unless CUDA is already
    initialised) inherits vLLM's "plugins loaded" flag and never calls this plugin itself. The
    main process keeps Python's own hook: a wrapper there would make ipdb stop one frame too deep.
    """
    global _fork_hook_registered
    if multiprocessing.parent_process() is not None:
        _install_if_default()
    elif not _fork_hook_registered:
        os.register_at_fork(after_in_child=_install_if_default)
        _fork_hook_registered = True
