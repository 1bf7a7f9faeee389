"""What tests/test_serve.py, tests/test_serve_owned.py and the `vllm_server` fixture (tests/conftest.py)
share: the test model, the CLI, timeouts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_MODEL = "tiny-phrasebook"
START_TIMEOUT_S = 300  # ~40 s when the machine is idle; much more while other work loads the CPU
API_KEY = "sk-test-4f1d9c2b7a"


def run_cli(*args: str, timeout_s: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m labs.core.serve ARGS` from the repository root, output captured."""
    return subprocess.run([sys.executable, "-m", "labs.core.serve", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout_s, env=env)


def collect_lines(stream: IO[str], into: list[str]) -> None:
    """Append each line of `stream` to `into` until it ends (run in a thread)."""
    for line in stream:
        into.append(line)
