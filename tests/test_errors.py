"""User-facing errors print as one clear message with no traceback (the issue's done-when list)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from labs.core.errors import run_main
from labs.core.vllm_internals import PINNED_VLLM_VERSION, check_vllm_version


def test_wrong_vllm_version_is_one_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(lambda: int(check_vllm_version(installed="0.31.0") == "")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: vLLM 0.31.0 is installed") and PINNED_VLLM_VERSION in err


def test_demo_with_a_missing_model_says_where_it_looked() -> None:
    env = {**os.environ, "VLLM_MODEL": "/no/such/model"}
    proc = subprocess.run([sys.executable, "-m", "labs.demo"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Model '/no/such/model' was not found. Looked in:" in proc.stderr
    assert "Traceback" not in proc.stderr
