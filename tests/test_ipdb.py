"""ipdb sessions typed into a real terminal (tmux), the way the workbook's users debug vLLM.

What this proves, end to end, with real ipdb and real vLLM on tiny-phrasebook:

1. `python -m ipdb my_debug_scripts/step1_basic_inference.py`, `b` in vLLM's `Scheduler.schedule`,
   `c`, `n`, `s`, `p len(self.running), len(self.waiting)`, `c` to the end: the breakpoint is
   hit (the script's guard put the engine core in this process) and the script exits 0.
2. `breakpoint()` inside vLLM's own code with PYTHONBREAKPOINT=ipdb.set_trace, in a learner's
   script on plain `vllm.LLM` that calls the guard, under `python -m ipdb` and `c` with no
   breakpoint set (tracing off, so only `labs.core.debug.safe`'s bdb check keeps the engine core
   here): ipdb stops in `schedule`.
3. The same `breakpoint()`, the same script without the guard, run plainly: the engine core is
   in its own process (no terminal there), and the learner gets one sentence saying what to do
   (labs/core/debug/ipdb_safe.py), no `bdb.BdbQuit` traceback, no hang, exit 0.

How `breakpoint()` gets into vLLM's code: the venv is shared, so the test does not edit
site-packages; a `sitecustomize` on PYTHONPATH compiles vLLM's real scheduler.py with
`breakpoint(); ` prefixed to the first statement of `schedule` (same file name, same line
numbers), in the main process and in the engine core vLLM spawns.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `ipdb_terminal`, whatever pytest's import mode
from ipdb_terminal import TerminalSession  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STEP1 = "my_debug_scripts/step1_basic_inference.py"
SCHEDULER = "vllm/v1/core/sched/scheduler.py"
START_TIMEOUT_S = 300  # vLLM import + engine start, traced by ipdb: ~1 min here, more when 2 cores are shared
END_TIMEOUT_S = 180
SENTENCE = re.compile(r"breakpoint\(\) at scheduler\.py:(\d+) skipped: .*VLLM_ENABLE_V1_MULTIPROCESSING=0")

SITECUSTOMIZE = textwrap.dedent('''
    """Test overlay: vLLM's scheduler.py with `breakpoint(); ` before one line (see tests/test_ipdb.py)."""
    import importlib.abc
    import importlib.machinery
    import os
    import sys

    LINE = int(os.environ["WORKBOOK_TEST_BREAKPOINT_LINE"])

    class _Loader(importlib.machinery.SourceFileLoader):
        def get_code(self, fullname):  # always from source: a cached .pyc lacks the breakpoint
            lines = self.get_source(fullname).splitlines(keepends=True)
            code = lines[LINE - 1]
            indent = code[:len(code) - len(code.lstrip())]
            lines[LINE - 1] = indent + "breakpoint(); " + code.lstrip()
            return compile("".join(lines), self.path, "exec", dont_inherit=True)

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "vllm.v1.core.sched.scheduler":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            spec.loader = _Loader(name, spec.origin)
            return spec

    sys.meta_path.insert(0, _Finder())
''')

OWN_SCRIPT = """\
\"\"\"A learner's own script on plain vLLM: the engine core in a second process unless the guard says otherwise.\"\"\"
{guard}

def main() -> int:
    from vllm import LLM, SamplingParams

    llm = LLM(model={model!r}, enforce_eager=True, max_model_len=512)
    # no progress bar: its redraws share the terminal with the engine core's sentence and can cut it
    out = llm.generate(["こんにちは"], SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
    print("GENERATED", len(out[0].outputs[0].token_ids), "tokens")
    llm.llm_engine.engine_core.shutdown()  # end cleanly, so a debugger is not left in shutdown code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
"""
GUARD = "from labs.core.debug.safe import prepare_debug_session\n\nprepare_debug_session(__file__)\n"


def own_script(tmp_path: Path, model_path: Path, *, guarded: bool) -> Path:
    """Write the learner's script, with or without `labs.core.debug.safe`'s guard as its first lines."""
    script = tmp_path / "my_script.py"
    script.write_text(OWN_SCRIPT.format(guard=GUARD if guarded else "", model=str(model_path)))
    return script


def schedule_lines() -> list[int]:
    """Line numbers of the statements in `Scheduler.schedule`'s body, read from the installed vLLM.

    Computed, not hard-coded, so a vLLM upgrade that moves the code cannot turn the breakpoint
    into one on a comment (which pdb refuses) or on a line that never runs.

    Returns:
        One line per top-level statement of the body, docstring left out.
    """
    spec = importlib.util.find_spec("vllm")  # finds the package without importing vLLM
    assert spec is not None and spec.submodule_search_locations, "vLLM is not installed"
    tree = ast.parse((Path(spec.submodule_search_locations[0]).parent / SCHEDULER).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Scheduler")
    schedule = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "schedule")
    body = schedule.body
    if isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    return [statement.lineno for statement in body]


def session_env(**extra: str) -> dict[str, str]:
    """The test's environment minus what would decide the outcome for the code under test."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VLLM_ENABLE_V1_MULTIPROCESSING", "PYTHONBREAKPOINT", "TMUX", "TMUX_PANE")}
    return env | {"PYTHONUNBUFFERED": "1"} | extra


def overlay_env(tmp_path: Path, line: int, **extra: str) -> dict[str, str]:
    """An environment whose Python runs vLLM's scheduler.py with `breakpoint()` on `line`."""
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    return session_env(PYTHONPATH=path, PYTHONBREAKPOINT="ipdb.set_trace",
                       WORKBOOK_TEST_BREAKPOINT_LINE=str(line), VLLM_CPU_KVCACHE_SPACE="1", **extra)


def location(line: int) -> str:
    """The regex of ipdb's `> .../scheduler.py(LINE)schedule()` line.

    Not anchored at the line's start: vLLM's progress bar, drawn without a newline, may precede it.
    """
    return rf"> \S*{re.escape(SCHEDULER)}\({line}\)schedule\(\)"


@pytest.fixture
def terminals() -> Iterator[list[TerminalSession]]:
    """Sessions a test opened; closed (their processes ended) whatever the outcome."""
    opened: list[TerminalSession] = []
    yield opened
    for session in opened:
        session.close()


def test_guard_sees_ipdb_after_continue_and_quickens_it(tmp_path: Path, terminals: list[TerminalSession]) -> None:
    """`python -m ipdb`, then `c` at once: bdb turns tracing off, the guard must still see ipdb,
    and turn off IPython's per-call `debuggerskip` check (minutes of vLLM start-up otherwise)."""
    script = tmp_path / "step9_guard.py"
    script.write_text("from labs.core.debug.safe import prepare_debug_session\n"
                      "prepare_debug_session(__file__)\n"
                      "import os\n"
                      "from labs.core.debug.ipdb_safe import running_debugger\n"
                      "print('ENGINE IN PROCESS:', os.environ.get('VLLM_ENABLE_V1_MULTIPROCESSING') == '0')\n"
                      "print('DEBUGGERSKIP:', running_debugger()._predicates['debuggerskip'])\n")
    term = TerminalSession([sys.executable, "-m", "ipdb", str(script)], env=session_env(), cwd=REPO)
    terminals.append(term)
    term.wait_prompt(60)
    out = term.command("c")
    assert "ENGINE IN PROCESS: True" in out, term.tail()
    assert "DEBUGGERSKIP: False" in out, term.tail()
    term.send("q")
    assert term.exit_status(30) == 0, term.tail()


FORKED_ENGINE_CORE = """\
import multiprocessing, sys
from labs.core.debug.ipdb_safe import register

def engine_core():
    for _ in range(3):  # like a breakpoint() in Scheduler.schedule, reached every step
        breakpoint()
    print("CHILD RAN ON", flush=True)

if __name__ == "__main__":
    register()  # what vLLM's load_general_plugins does in the main process, before it forks
    child = multiprocessing.get_context("fork").Process(target=engine_core, name="EngineCore")
    child.start()
    child.join(60)
    print("CHILD EXIT", child.exitcode, "| MAIN HOOK UNTOUCHED", sys.breakpointhook is sys.__breakpointhook__)
"""


def test_forked_engine_core_gets_the_sentence(tmp_path: Path, terminals: list[TerminalSession]) -> None:
    """The GPU path, without a GPU: vLLM forks its engine core there, and a forked child inherits
    vLLM's "plugins loaded" flag, so the plugin never runs in it; `register`'s at-fork hook must."""
    script = tmp_path / "forked.py"
    script.write_text(FORKED_ENGINE_CORE)
    env = session_env(PYTHONBREAKPOINT="ipdb.set_trace")
    term = TerminalSession([sys.executable, str(script)], env=env, cwd=REPO)
    terminals.append(term)
    assert term.exit_status(60) == 0, term.tail()
    screen = term.screen()
    assert len(re.findall(r"breakpoint\(\) at forked\.py:\d+ skipped: .*'EngineCore'", screen)) == 1, term.tail()
    assert "CHILD RAN ON" in screen and "CHILD EXIT 0 | MAIN HOOK UNTOUCHED True" in screen, term.tail()


@pytest.mark.engine
@pytest.mark.debugger
def test_ipdb_session_stops_in_vllms_scheduler(terminals: list[TerminalSession]) -> None:
    """The session as a person types it, from `python -m ipdb` to exit status 0."""
    first, second = schedule_lines()[:2]
    term = TerminalSession([sys.executable, "-m", "ipdb", STEP1], env=session_env(), cwd=REPO)
    terminals.append(term)
    term.wait_prompt(60)

    out = term.command(f"b {SCHEDULER}:{first}")
    assert re.search(rf"Breakpoint 1 at \S*{re.escape(SCHEDULER)}:{first}", out), term.tail()
    out = term.command("c", timeout=START_TIMEOUT_S)
    assert re.search(location(first), out), term.tail()
    hit_after = term.elapsed()

    out = term.command("n")
    assert re.search(location(second), out), term.tail()
    out = term.command("s")
    assert re.search(r"> \S+\(\d+\)\w+\(\)", out), term.tail()  # a new stop, wherever `s` led
    out = term.command("p len(self.running), len(self.waiting)")
    assert "(0, 4)" in out, term.tail()  # LLM.generate queued the script's 4 prompts; none runs yet

    out = term.command("cl 1")
    assert "Deleted breakpoint 1" in out, term.tail()
    out = term.command("c", timeout=END_TIMEOUT_S)
    assert "The program exited via sys.exit(). Exit status: 0" in out, term.tail()
    term.send("q")  # pdb restarts a finished program; `q` leaves
    assert term.exit_status(30) == 0, term.tail()
    print(f"\nstopped in Scheduler.schedule after {hit_after:.0f} s; ipdb exited 0 after {term.elapsed():.0f} s")


@pytest.mark.engine
@pytest.mark.debugger
def test_breakpoint_in_vllm_stops_ipdb_in_a_guarded_script(tmp_path: Path, model_path: Path,
                                                           terminals: list[TerminalSession]) -> None:
    """`breakpoint()` in vLLM + PYTHONBREAKPOINT=ipdb.set_trace + `python -m ipdb`, `c` at once.

    The script builds a plain `vllm.LLM` (vLLM's default puts the engine core in a second process),
    and `c` with no breakpoint set turns tracing off before the guard runs: only the guard's bdb
    check keeps the engine core in this process, where ipdb has the terminal.
    """
    first, second = schedule_lines()[:2]
    script = own_script(tmp_path, model_path, guarded=True)
    term = TerminalSession([sys.executable, "-m", "ipdb", str(script)], env=overlay_env(tmp_path, first), cwd=REPO)
    terminals.append(term)
    term.wait_prompt(60)

    out = term.command("c", timeout=START_TIMEOUT_S)
    assert re.search(location(second), out), term.tail()  # ipdb stops on the line after the breakpoint() call
    out = term.command("p len(self.running), len(self.waiting)")
    assert "(0, 1)" in out, term.tail()  # the script's one prompt waits for this first step
    term.command("import os; os.environ['PYTHONBREAKPOINT'] = '0'")  # Python's hook: later breakpoint()s do nothing
    out = term.command("c", timeout=END_TIMEOUT_S)
    assert "The program exited via sys.exit(). Exit status: 0" in out, term.tail()
    term.send("q")
    assert term.exit_status(30) == 0, term.tail()
    assert not SENTENCE.search(term.screen()), term.tail()


@pytest.mark.engine
@pytest.mark.debugger
def test_breakpoint_in_an_engine_core_without_terminal_says_what_to_do(tmp_path: Path, model_path: Path,
                                                                       terminals: list[TerminalSession]) -> None:
    """No guard, no debugger: the engine core runs in its own process, where stdin is /dev/null.

    One sentence, the engine runs on, the script exits 0; not `bdb.BdbQuit` and "EngineCore died".
    """
    first = schedule_lines()[0]
    script = own_script(tmp_path, model_path, guarded=False)
    term = TerminalSession([sys.executable, str(script)], env=overlay_env(tmp_path, first), cwd=REPO)
    terminals.append(term)

    status = term.exit_status(START_TIMEOUT_S + END_TIMEOUT_S)  # a hang fails here with the screen
    screen = term.screen()
    assert status == 0, term.tail()
    assert SENTENCE.findall(screen) == [str(first)], term.tail()  # once, though schedule() ran every step
    assert re.search(r"GENERATED \d+ tokens", screen), term.tail()
    assert "Traceback" not in screen and "BdbQuit" not in screen, term.tail()
    print(f"\n{SENTENCE.search(screen).group(0)[:80]}... exit 0 after {term.elapsed():.0f} s")
