"""A stand-in for a notebook kernel or a shell, run by tests/test_serve_owned.py in a subprocess.

Why a subprocess: what is tested is how a server inherits (or does not inherit) the environment
of the process that starts it and of the tmux server, and how it outlives (or does not) a process
that is killed; the test runner's own environment and life must not take part.

    python -m tests.notebook_stand_in own LOG_DIR NAME
        `serve.owned_server`, then one line `SERVER {json}`; exits cleanly when stdin closes.
    python -m tests.notebook_stand_in child-env ENV_FILE [EXECUTOR]
        `SERVER {json}` with the `child_env()` that `python -m labs.core.serve start-bg [--executor EXECUTOR]`
        computes here.

The JSON always holds `child_env`: what this process's config says the server's environment is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from labs.core import serve

TEST_MODEL = "tiny-phrasebook"


def _report(**facts: object) -> None:
    print("SERVER " + json.dumps(facts), flush=True)


def main(argv: list[str]) -> int:
    command = argv[0]
    if command == "own":
        from labs.core.serve.owned import KERNEL_ONLY_ENV  # here: `child-env` also runs on older code

        log_dir, name = Path(argv[1]), argv[2]
        server = serve.owned_server(name, log_dir=log_dir, model=TEST_MODEL)
        expected = serve.build_config(TEST_MODEL, unset_env=KERNEL_ONLY_ENV).child_env()
        _report(pid=server.pid, url=server.url, owned=server.owned, reused=server.reused, child_env=expected)
        sys.stdin.read()  # until the test closes our stdin (a clean exit) or kills us
        return 0
    if command == "child-env":
        executor = argv[2] if len(argv) > 2 else None
        _report(child_env=serve.build_config(TEST_MODEL, env_file=Path(argv[1]), executor=executor).child_env())
        return 0
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
