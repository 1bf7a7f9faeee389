"""Run an engine in a fresh Python process and read back what it recorded: a test support module.

Why a fresh process: a test whose engine needs its own settings (Lab 3's scarce KV cache, Lab 7's
speculative config, Lab 6's profiler) cannot build that engine in the test process. A second
engine there would share vLLM's process-wide distributed state with conftest's session engine,
and freeing it would tear that state down under every other test of the session. So the engine
side is a module-level function that runs in a child process and writes everything the engine
did to a JSON file; the tests read that record here and check it.

Why a module of its own: several test files use it; importing a helper from another `test_*`
module would run (and collect) that module's tests as a side effect.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300  # an engine's start-up and a few tiny runs; far less when the machine is idle


def record_in_fresh_process(record: Callable[..., None], out_path: Path, *args: str,
                            timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """Call `record(str(out_path), *args)` in a fresh Python process and return the JSON it wrote there.

    Args:
        record: a module-level function (the child imports it by module and name) that writes its
            record as JSON to the path it is given first.
        out_path: where the child writes its record.
        *args: further string arguments for `record`.
        timeout_s: how long the child may run.

    Returns:
        The record, as `json.loads` reads it; the test turns it back into objects.
    """
    call = ", ".join(repr(arg) for arg in (str(out_path), *args))
    code = f"from {record.__module__} import {record.__name__}; {record.__name__}({call})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout_s)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(Path(out_path).read_text(encoding="utf-8"))
