"""Drive a real debugpy session over my_debug_scripts/step1_basic_inference.py, the way VS Code would.

What this proves, end to end: with the script's own guard (labs.core.debug.safe) and nothing exported,
a breakpoint inside vLLM's `LLM.generate` is hit, the stack down to the script's `main` is
readable, and after `continue` the script finishes and exits 0, with the engine core in-process.
This is the hang the workbook's debugging chapter is about; a unit test of debug_safe alone would
not catch a vLLM change that brings it back.
"""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `dap_client`, whatever pytest's import mode
from dap_client import DAPClient, free_port, kill_tree, tail  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "my_debug_scripts" / "step1_basic_inference.py"
DEBUG_LOG = REPO / "my_debug_scripts" / ".logs" / "step1_basic_inference.debug.log"

CONNECT_TIMEOUT_S = 30
BREAKPOINT_TIMEOUT_S = 240  # import vLLM + build the engine under the debugger's tracing
EXIT_TIMEOUT_S = 180


def generate_breakpoint() -> tuple[str, int]:
    """(file, line) of the first statement of `LLM.generate`'s body after its docstring.

    Computed from the installed vLLM rather than hard-coded, so a vLLM upgrade that moves the code
    does not silently turn this into a breakpoint on a comment or blank line (which debugpy would
    either move or never hit). The first statement after the docstring always executes.
    """
    from vllm.entrypoints.llm import LLM

    function = inspect.unwrap(LLM.generate)
    source_file = inspect.getsourcefile(function)
    lines, first_line = inspect.getsourcelines(function)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    definition = tree.body[0]
    assert isinstance(definition, ast.FunctionDef | ast.AsyncFunctionDef)
    body = definition.body
    has_docstring = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
        and isinstance(body[0].value.value, str)
    statement = body[1] if has_docstring and len(body) > 1 else body[0]
    assert source_file is not None
    return source_file, first_line + statement.lineno - 1


@pytest.mark.debugger
def test_breakpoint_in_llm_generate_under_debugpy() -> None:
    bp_file, bp_line = generate_breakpoint()
    port = free_port()
    DEBUG_LOG.unlink(missing_ok=True)  # a stale log from an earlier run must not make this pass

    env = dict(os.environ)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the script's own guard is what is under test
    env["PYTHONUNBUFFERED"] = "1"

    with tempfile.NamedTemporaryFile(prefix="debugpy-step1-", suffix=".log", delete=False) as out:
        child_log = Path(out.name)
    started = time.monotonic()
    with child_log.open("wb") as out:  # a file, not a PIPE: vLLM logs a lot and nobody reads a pipe
        proc = subprocess.Popen(
            [sys.executable, "-m", "debugpy", "--listen", f"127.0.0.1:{port}", "--wait-for-client",
             str(SCRIPT.relative_to(REPO))],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so kill_tree also gets debugpy's adapter
        )

    def context(what: str) -> str:
        return (f"{what} (after {time.monotonic() - started:.0f} s; child exit code: {proc.poll()})\n"
                f"--- child output tail ({child_log}) ---\n{tail(child_log)}")

    client: DAPClient | None = None
    try:
        try:
            client = DAPClient.connect("127.0.0.1", port, timeout=CONNECT_TIMEOUT_S,
                                       alive=lambda: proc.poll() is None)
        except (TimeoutError, ConnectionError) as exc:
            pytest.fail(context(f"could not connect to debugpy: {exc}"))

        try:
            client.request("initialize", {
                "clientID": "workbook-tests", "clientName": "workbook tests", "adapterID": "debugpy",
                "pathFormat": "path", "linesStartAt1": True, "columnsStartAt1": True,
                "supportsVariableType": True, "supportsRunInTerminalRequest": False,
            })
            # debugpy answers `attach` only after configurationDone: send it, don't wait yet.
            attach_seq = client.send_request("attach", {
                "name": "workbook test attach", "type": "debugpy", "request": "attach",
                "justMyCode": False,  # the breakpoint is in site-packages
                "redirectOutput": False,  # the child's output already goes to the temp file
            })
            client.wait_event("initialized", timeout=30)
            bp_body = client.request("setBreakpoints", {
                "source": {"path": bp_file}, "breakpoints": [{"line": bp_line}],
            })
            client.request("configurationDone")
            client.wait_response(attach_seq, timeout=30)

            breakpoints = bp_body.get("breakpoints", [])
            assert len(breakpoints) == 1, bp_body
            # debugpy may leave `verified` false until the module is loaded; the line must not move.
            assert breakpoints[0].get("line", bp_line) == bp_line, bp_body

            stopped = client.wait_event("stopped", timeout=BREAKPOINT_TIMEOUT_S,
                                        predicate=lambda body: body.get("reason") == "breakpoint")
            hit_after = time.monotonic() - started
            thread_id = stopped.get("threadId")
            threads = client.request("threads")["threads"]
            if thread_id is None:  # allowed by the spec; take the main thread
                thread_id = threads[0]["id"]
            assert thread_id in [t["id"] for t in threads], threads

            frames = client.request("stackTrace", {"threadId": thread_id, "startFrame": 0, "levels": 100})["stackFrames"]
            top = frames[0]
            assert top["name"].endswith("generate"), frames[:3]
            assert Path(top["source"]["path"]).as_posix().endswith("vllm/entrypoints/llm.py"), top
            assert top["line"] == bp_line, top
            assert any(f["name"].endswith("main") and f.get("source", {}).get("path", "").endswith("step1_basic_inference.py")
                       for f in frames[1:]), [(f["name"], f.get("source", {}).get("path")) for f in frames]

            scopes = client.request("scopes", {"frameId": top["id"]})["scopes"]
            local_scope = next(s for s in scopes if s["name"].lower().startswith("local"))
            variables = client.request("variables", {"variablesReference": local_scope["variablesReference"]})["variables"]
            names = {v["name"] for v in variables}
            assert {"self", "prompts"} <= names, sorted(names)
            prompts_var = next(v for v in variables if v["name"] == "prompts")
            assert "list" in (prompts_var.get("type") or "") or prompts_var["value"].startswith("["), prompts_var

            client.request("continue", {"threadId": thread_id})
        except AssertionError as exc:
            pytest.fail(context(f"debug session check failed: {exc}"))
        except (TimeoutError, RuntimeError, KeyError, StopIteration) as exc:
            pytest.fail(context(f"debug session failed: {exc!r}"))

        try:
            code = proc.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(context(f"script did not exit within {EXIT_TIMEOUT_S} s after continue"))
        assert code == 0, context(f"script exited with {code}")

        assert DEBUG_LOG.exists(), context(f"no debug log at {DEBUG_LOG}: was the debugger detected?")
        log_text = DEBUG_LOG.read_text(encoding="utf-8")
        assert "engine core runs in this process" in log_text, context(f"debug log says:\n{log_text}")
        # The script logs on after vLLM reconfigured logging (which closes every handler) until the end.
        assert "generating 4 prompts" in log_text and "done" in log_text, context(f"debug log says:\n{log_text}")
        print(f"\nbreakpoint hit after {hit_after:.1f} s; script exited 0 after {time.monotonic() - started:.1f} s")
    finally:
        if client is not None:
            client.close()
        kill_tree(proc)
        child_log.unlink(missing_ok=True)
