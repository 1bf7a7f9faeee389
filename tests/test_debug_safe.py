"""The debug guard, in fresh interpreters: without a debugger it changes nothing; with a tracer
attached it keeps the engine core in-process and moves the script's logging to its own file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import os, sys
    if sys.argv[1] == "traced":
        sys.settrace(lambda *a: None)  # what pdb/debugpy do: a trace function is installed
    from labs.core.debug.safe import prepare_debug_session
    log = prepare_debug_session(sys.argv[2])
    log.info("hello from the script")
    print("ENV", os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING"))
    print("HANDLERS", [type(h).__name__ for h in log.handlers], log.propagate)
""")


def _run(mode: str, script_file: Path, **env: str) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"} | env
    return subprocess.run([sys.executable, "-c", SCRIPT, mode, str(script_file)],
                          capture_output=True, text=True, env=child_env, timeout=60)


def test_without_debugger_nothing_changes(tmp_path: Path) -> None:
    proc = _run("plain", tmp_path / "step9_x.py")
    assert "ENV None" in proc.stdout
    assert "hello from the script" in proc.stderr
    assert not (tmp_path / ".logs").exists()


def test_with_debugger_engine_in_process_and_log_to_file(tmp_path: Path) -> None:
    proc = _run("traced", tmp_path / "step9_x.py")
    assert "ENV 0" in proc.stdout
    assert "HANDLERS ['FileHandler'] False" in proc.stdout
    assert "hello from the script" not in proc.stderr
    log = (tmp_path / ".logs" / "step9_x.debug.log").read_text()
    assert "hello from the script" in log and "VLLM_ENABLE_V1_MULTIPROCESSING=0" in log


def test_explicit_setting_is_respected(tmp_path: Path) -> None:
    proc = _run("traced", tmp_path / "step9_x.py", VLLM_ENABLE_V1_MULTIPROCESSING="1")
    assert "ENV 1" in proc.stdout
    assert "set by you" in (tmp_path / ".logs" / "step9_x.debug.log").read_text()
