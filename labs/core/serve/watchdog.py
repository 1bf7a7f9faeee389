"""`python -m labs.core.serve.watchdog LOG_DIR`: stop an owned server once no process owns it any more.

Why a separate process: an owner killed with SIGKILL (a crashed or restarted notebook kernel, a
test runner that timed out) runs no clean-up code of its own. The watchdog runs in a session of
its own, so a signal to the owner's process group does not reach it, and it polls the owners
listed in `owners.json` (see `labs.core.serve.owners`); once none is alive it stops the server's whole
process group and its tmux session, removes the owners file and exits. It also exits, leaving the
server alone, when the file is gone or names another watchdog (the last owner stopped the server
itself, or a later owner replaced a watchdog it thought dead), or when the server has stopped.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

from labs.core.serve import owners

POLL_S = 0.5  # how long a dead owner's server keeps running, at most, before its stop begins


def _echo(message: str) -> None:
    print(f"{datetime.now():%H:%M:%S} watchdog: {message}", flush=True)


def check_once(log_dir: Path, me: owners.Proc) -> bool:
    """One look at the owners; stop the server if none is alive.

    Args:
        log_dir: the server's log folder.
        me: this watchdog, as the owners file should name it.

    Returns:
        True to keep watching, False to exit.
    """
    with owners.locked(log_dir):
        state = owners.read(log_dir)
        if state is None or state.watchdog is None or not state.watchdog.same(me):
            return False
        if state.server is not None and not state.server.alive():
            _echo(f"the server (pid {state.server.pid}) has stopped; nothing left to watch.")
            owners.remove(log_dir)
            return False
        live = state.live_owners()
        if live:
            if len(live) != len(state.owners):
                state.owners = live
                owners.write(log_dir, state)
            return True
        _echo(f"no owner of the server on port {state.port} is alive: stopping it.")
        owners.end_server(log_dir, state, _echo)
        owners.remove(log_dir)
        return False


def main(log_dir: Path) -> int:
    """Watch the owners until the server is stopped or released.

    Args:
        log_dir: the server's log folder (its `owners.json` names this watchdog).

    Returns:
        The exit status: always 0.
    """
    me = owners.Proc.current()
    _echo(f"pid {me.pid} watching the owners of {log_dir}.")
    while check_once(log_dir, me):
        time.sleep(POLL_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
