"""A real terminal for tests that type into ipdb: a private tmux server, `send-keys`, `capture-pane`.

Why tmux and not a pipe: ipdb (IPython's prompt_toolkit) behaves differently without a
terminal, and a pipe is exactly the "no terminal" case the workbook guards against elsewhere.
A pane is a real pseudo-terminal, and what `capture-pane` returns is what a person would see.

Why a private server (own socket directory, own config) and `env -i`: the tmux server is shared
by nobody else, so stopping it ends only what the test started, and a tmux server's own
environment would otherwise leak into the command (labs/core/serve/SERVING.md, "Environment").
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

EXIT_MARK = "__TERMINAL_EXIT__"  # printed by the pane's shell with the command's exit status
PROMPT_LINE = re.compile(r"^ipdb>(.*)$", re.MULTILINE)  # a prompt, and what was typed at it
T = TypeVar("T")
TMUX_CONF = """\
set -g history-limit 100000
set -g remain-on-exit on
set -g default-terminal screen
"""


class TerminalTimeout(AssertionError):
    """What the test waited for did not appear on the screen in time (a hang is a failure)."""


class TerminalSession:
    """One command running in a tmux pane (220 columns) on a private tmux server.

    Use `send(line)` to type a line and press Enter, `command(line)` to type one and get its output,
    `wait_for(regex)` to wait until the screen shows something, `close()` to end it.
    """

    def __init__(self, argv: list[str], *, env: dict[str, str], cwd: Path) -> None:
        """Start `argv` in a fresh pane, with exactly `env` as its environment.

        Args:
            argv: the command, e.g. [python, "-m", "ipdb", script].
            env: the complete environment of the command (TERM is set to match the pane).
            cwd: its working directory.
        """
        if shutil.which("tmux") is None:
            raise RuntimeError("tmux is not installed: these tests type into a real terminal through it")
        self._dir = Path(tempfile.mkdtemp(prefix="ipdb-tmux-"))  # short: a socket path has a length limit
        conf = self._dir / "tmux.conf"
        conf.write_text(TMUX_CONF)
        env = {**env, "TERM": "screen"}
        command = " ".join(["env", "-i", *(shlex.quote(f"{k}={v}") for k, v in env.items()),
                            *(shlex.quote(a) for a in argv)])
        script = self._dir / "run.sh"
        script.write_text(f"cd {shlex.quote(str(cwd))}\n{command}\necho \"{EXIT_MARK} $?\"\n")
        self._tmux = ["tmux", "-S", str(self._dir / "socket"), "-f", str(conf)]
        subprocess.run([*self._tmux, "new-session", "-d", "-s", "t", "-x", "220", "-y", "50",
                        f"bash {shlex.quote(str(script))}"], check=True, timeout=30)
        self.started = time.monotonic()

    def screen(self) -> str:
        """Everything the pane has shown so far (scroll-back included), wrapped lines joined."""
        out = subprocess.run([*self._tmux, "capture-pane", "-p", "-J", "-S", "-", "-t", "t"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout

    def send(self, line: str) -> None:
        """Type `line` literally, then press Enter."""
        subprocess.run([*self._tmux, "send-keys", "-t", "t", "-l", line], check=True, timeout=30)
        subprocess.run([*self._tmux, "send-keys", "-t", "t", "Enter"], check=True, timeout=30)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait until `pattern` (a regex, multi-line) shows on the screen.

        Args:
            pattern: what to wait for.
            timeout: seconds before failing with the screen's tail.

        Returns:
            The match, against the whole screen text.
        """
        regex = re.compile(pattern, re.MULTILINE)
        return self._wait(regex.search, timeout, f"waiting for {pattern!r}")

    def wait_prompt(self, timeout: float, count: int = 1) -> str:
        """Wait until the screen shows `count` `ipdb>` prompts, the last one empty; returns the screen."""
        def ready(text: str) -> str | None:
            prompts = PROMPT_LINE.findall(text)
            return text if len(prompts) >= count and not prompts[-1].strip() else None
        return self._wait(ready, timeout, f"waiting for ipdb prompt #{count}")

    def command(self, line: str, timeout: float = 60) -> str:
        """Type one debugger command at the current prompt and return its output.

        Prompts are counted rather than offsets kept: prompt_toolkit redraws the line being typed,
        so the screen's text before it is not a stable prefix.

        Args:
            line: e.g. "n" or "p len(self.running), len(self.waiting)".
            timeout: seconds to wait for the next prompt.

        Returns:
            The text between the typed line and the next prompt.
        """
        before = len(PROMPT_LINE.findall(self.screen()))  # the empty prompt we type at is the last
        self.send(line)
        text = self.wait_prompt(timeout, before + 1)
        prompts = list(PROMPT_LINE.finditer(text))
        typed = prompts[before - 1]
        assert typed.group(1).strip() == line, f"typed {line!r}, the screen shows {typed.group(0)!r}"
        return text[typed.end():prompts[-1].start()]

    def _wait(self, found: Callable[[str], T | None], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            result = found(text)
            if result:
                return result
            exited = re.search(rf"^{EXIT_MARK} (\d+)", text, re.MULTILINE)
            if exited or time.monotonic() > deadline:
                why = f"the command exited ({exited.group(1)})" if exited else f"{timeout:.0f} s passed"
                raise TerminalTimeout(f"{what}: {why} after {self.elapsed():.0f} s; screen tail:\n{self.tail()}")
            time.sleep(0.5)

    def exit_status(self, timeout: float) -> int:
        """Wait for the command to end; returns its exit status."""
        return int(self.wait_for(rf"^{EXIT_MARK} (\d+)\s*$", timeout).group(1))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.screen().rstrip().splitlines()[-lines:])

    def close(self) -> None:
        """End the pane's processes (SIGHUP to its process group) and this test's tmux server."""
        subprocess.run([*self._tmux, "kill-session", "-t", "t"], capture_output=True, timeout=30)
        shutil.rmtree(self._dir, ignore_errors=True)
