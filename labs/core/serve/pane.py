"""The first program in the server's tmux pane: give vLLM exactly its environment, then become it.

Why this exists: a tmux server keeps the environment of whatever process started it (say, a
notebook kernel with `VLLM_ENABLE_V1_MULTIPROCESSING=0` and `VLLM_LOGGING_LEVEL=WARNING`) and gives
it to every new pane; `tmux new-session -e KEY=VALUE` adds variables but cannot remove one. So the
pane runs this script instead, which replaces its inherited environment with the one written by
`labs.core.serve.launch.launch_in_tmux` (the server's `ServerConfig.child_env()`).

Why a file and not `env -i KEY=VALUE ... command`: the environment holds the API key, and a command
line is readable by every user through `ps`. The file is created mode 0600 and deleted here as
soon as it is read, before vLLM starts.

Why no shell (`sh -c "cmd | tee log"`): a shell adds variables of its own (dash exports `PWD`);
here `tee` is started directly (not as the server's child), and this process then execs the server,
so the pane's pid is the server's pid and the process group `stop` signals.

Run as `python -I -S pane.py SPEC_FILE` (isolated: the tmux server's PYTHON* variables and site
packages cannot change this script); it imports nothing from the workbook. The spec is JSON:
{"argv": [...], "env": {...}, "log_path": "...", "tee": "/usr/bin/tee"}.
"""

from __future__ import annotations

import json
import os
import sys

# What tmux itself sets in a pane: they describe the pane's terminal (which the server's output
# reaches through `tee`), not the terminal of whoever started the server, so tmux's values win.
TMUX_PANE_ENV = ("TERM", "TMUX", "TMUX_PANE")


def pane_env(server_env: dict[str, str], inherited: dict[str, str]) -> dict[str, str]:
    """The server's environment inside the pane.

    Args:
        server_env: `ServerConfig.child_env()`, as the launcher computed it.
        inherited: this process's environment (the tmux server's, plus tmux's own variables).

    Returns:
        `server_env`, with only `TMUX_PANE_ENV` taken from tmux.
    """
    env = {k: v for k, v in server_env.items() if k not in TMUX_PANE_ENV}
    env.update({k: inherited[k] for k in TMUX_PANE_ENV if k in inherited})
    return env


def main(spec_path: str) -> None:
    """Read and delete the spec, start `tee` on a pipe, and exec the server writing into it."""
    with open(spec_path, encoding="utf-8") as spec_file:
        spec = json.load(spec_file)
    os.unlink(spec_path)  # the API key must not stay on disk
    env = pane_env(spec["env"], dict(os.environ))
    read_end, write_end = os.pipe()
    # `tee` copies the server's output to the pane and the log. Forked twice, so that it is not the
    # server's child: tools that walk the server's process tree (py-spy --subprocesses, vLLM's own
    # child handling) then see only vLLM's processes. It stays in the process group `stop` signals.
    middle = os.fork()
    if middle == 0:  # starts tee, then exits at once so that tee is reparented away from the server
        try:
            if os.fork() == 0:
                try:
                    os.dup2(read_end, 0)
                    os.close(read_end)
                    os.close(write_end)
                    os.execve(spec["tee"], [spec["tee"], "-a", spec["log_path"]], env)
                finally:  # only reached if exec failed
                    os._exit(127)
        finally:  # never run the parent's code twice
            os._exit(0)
    os.waitpid(middle, 0)
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(read_end)
    os.close(write_end)
    os.execve(spec["argv"][0], spec["argv"], env)


if __name__ == "__main__":
    main(sys.argv[1])
