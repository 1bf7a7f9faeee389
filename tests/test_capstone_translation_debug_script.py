"""my_debug_scripts/capstone_translation.py under a real debugpy session, the way VS Code's F5 runs it.

The script runs under `python -m debugpy --listen ... --wait-for-client` against the session's
shared server (`vllm_server`, reached through VLLM_BASE_URL as `lab_server` reaches a learner's
running server). A DAP client (tests/dap_client.py) sets a breakpoint in the client pipeline's
`stream_once` (labs/capstone_translation/request.py, inside the job's asyncio loop): it must stop
there with the request's `max_tokens` and `messages` readable and `main` of the script down the
stack; after `continue` the script must translate the sample exactly (tiny-phrasebook knows every
sentence), print the pipeline's plan, exit 0, and have written its own log to its file.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from labs.capstone_translation import request as pipeline_request
from labs.capstone_translation.samples import sample_paragraphs
from labs.core.debug.safe import MULTIPROCESSING_ENV, debug_log_path
from labs.core.serve import OwnedServer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `dap_client`, whatever pytest's import mode
from dap_client import attach, free_port, kill_tree, tail  # noqa: E402

pytestmark = [pytest.mark.server, pytest.mark.debugger]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "my_debug_scripts" / "capstone_translation.py"
BREAKPOINT_TIMEOUT_S = 240  # the pipeline's imports and the plan, under the debugger's tracing
EXIT_TIMEOUT_S = 180


def first_statement(function: Any) -> tuple[str, int]:
    """(file, line) of `function`'s first statement after its docstring: a line that always runs."""
    lines, first_line = inspect.getsourcelines(function)
    body = ast.parse(textwrap.dedent("".join(lines))).body[0].body
    has_docstring = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
    statement = body[1] if has_docstring else body[0]
    return str(inspect.getsourcefile(function)), first_line + statement.lineno - 1


def test_a_breakpoint_in_the_client_pipeline_stops_and_the_script_translates(vllm_server: OwnedServer,
                                                                            tmp_path: Path) -> None:
    bp_file, bp_line = first_statement(pipeline_request.stream_once)
    port = free_port()
    log_path = debug_log_path(str(SCRIPT))
    log_path.unlink(missing_ok=True)  # a stale log from an earlier run must not make this pass
    env = {k: v for k, v in os.environ.items() if k not in (MULTIPROCESSING_ENV, "LABS_ENGINE")}
    env |= {"VLLM_BASE_URL": vllm_server.url, "VLLM_API_KEY": vllm_server.api_key or "", "PYTHONUNBUFFERED": "1"}
    child_log = tmp_path / "child.log"
    with child_log.open("wb") as out:  # a file, not a pipe nobody reads while the debuggee is paused
        proc = subprocess.Popen([sys.executable, "-m", "debugpy", "--listen", f"127.0.0.1:{port}", "--wait-for-client",
                                 str(SCRIPT), "--out", str(tmp_path / "job")], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    client = None
    try:
        client = attach(port, proc, bp_file, bp_line)
        stopped = client.wait_event("stopped", timeout=BREAKPOINT_TIMEOUT_S,
                                    predicate=lambda body: body.get("reason") == "breakpoint")
        thread_id = stopped.get("threadId") or client.request("threads")["threads"][0]["id"]
        frames = client.request("stackTrace", {"threadId": thread_id, "startFrame": 0, "levels": 200})["stackFrames"]
        top = frames[0]
        assert top["name"].endswith("stream_once") and top["line"] == bp_line, frames[:3]
        assert any(f["name"].endswith("main") and f.get("source", {}).get("path", "").endswith(SCRIPT.name)
                   for f in frames[1:]), [(f["name"], f.get("source", {}).get("path")) for f in frames]
        scope = next(s for s in client.request("scopes", {"frameId": top["id"]})["scopes"]
                     if s["name"].lower().startswith("local"))
        local = {v["name"]: v["value"] for v in client.request(
            "variables", {"variablesReference": scope["variablesReference"]})["variables"]}
        assert {"messages", "max_tokens", "model"} <= set(local) and int(local["max_tokens"]) > 0, local
        client.request("setBreakpoints", {"source": {"path": bp_file}, "breakpoints": []})  # let the other chunks run
        client.request("continue", {"threadId": thread_id})
        code = proc.wait(timeout=EXIT_TIMEOUT_S)
        assert code == 0, tail(child_log)
    except (TimeoutError, RuntimeError, KeyError, StopIteration, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"debug session failed: {exc!r}\n--- child output ---\n{tail(child_log)}")
    finally:
        if client is not None:
            client.close()
        kill_tree(proc)

    out = child_log.read_text(encoding="utf-8")
    planned = re.search(r"inference_notes\.txt: \d+ segments in (\d+) chunks \(max_model_len \d+", out)
    assert planned, out[-3000:]
    chunk_lines = re.findall(r"^  chunk +\d+ .* prompt +\d+ tokens, max_tokens \d+$", out, re.M)
    assert len(chunk_lines) == int(planned.group(1)), out[-3000:]
    _, zh = sample_paragraphs("inference_notes")
    assert (tmp_path / "job" / "out" / "inference_notes_zh.txt").read_text(encoding="utf-8") == "\n\n".join(zh) + "\n"
    log = log_path.read_text(encoding="utf-8")
    assert "debugger attached" in log and "chunker: labs.capstone_translation.solution" in log, log
    assert "done: translated" in log and "[workbook.capstone_translation]" not in out, log
