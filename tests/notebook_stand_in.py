"""A stand-in for a notebook kernel or a shell, run by tests/test_serve.py in a subprocess.

Why a subprocess: what is tested is how a server inherits (or does not inherit) the environment
of the process that starts it and of the tmux server, and how it outlives (or does not) a process
that is killed; the test runner's own environment and life must not take part.

    python -m tests.notebook_stand_in own LOG_DIR NAME
        `serve.owned_server`, then one line `SERVER {json}`; exits cleanly when stdin closes.
    python -m tests.notebook_stand_in start-bg LOG_DIR PORT SESSION ENV_FILE
        `serve.start_background` in tmux, then `SERVER {json}`; exits, leaving the server up.
    python -m tests.notebook_stand_in child-env ENV_FILE
        `SERVER {json}` with the `child_env()` that `python -m labs.core.serve start-bg` computes here.

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
        from labs.core.serve.owned import KERNEL_ONLY_ENV  # here: the other commands also run on older code

        log_dir, name = Path(argv[1]), argv[2]
        server = serve.owned_server(name, log_dir=log_dir, model=TEST_MODEL)
        expected = serve.build_config(TEST_MODEL, unset_env=KERNEL_ONLY_ENV).child_env()
        _report(pid=server.pid, url=server.url, owned=server.owned, reused=server.reused, child_env=expected)
        sys.stdin.read()  # until the test closes our stdin (a clean exit) or kills us
        return 0
    if command == "start-bg":
        log_dir, port, session, env_file = Path(argv[1]), int(argv[2]), argv[3], Path(argv[4])
        config = serve.build_config(TEST_MODEL, port=port, log_dir=log_dir, session_name=session, env_file=env_file)
        started = serve.start_background(config, timeout_s=300, use_tmux=True)
        _report(pid=started.record.pid, url=config.url, child_env=config.child_env())
        return 0
    if command == "child-env":
        _report(child_env=serve.build_config(TEST_MODEL, env_file=Path(argv[1])).child_env())
        return 0
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
