"""A small Debug Adapter Protocol (DAP) client, standard library only, for driving debugpy in tests.

Why write one instead of using a library: the tests only need a handful of requests
(initialize, attach, setBreakpoints, configurationDone, threads, stackTrace, scopes, variables,
continue), and a client this small shows exactly what VS Code says to debugpy when you press F5.

The protocol, briefly (https://microsoft.github.io/debug-adapter-protocol/overview):

* Every message is a JSON object preceded by an HTTP-like header, `Content-Length: N\\r\\n\\r\\n`,
  where N is the number of bytes of the UTF-8 body. There is no other framing.
* Three message types: `request` (client -> adapter, or the adapter's rare "reverse requests"),
  `response` (carries `request_seq` and `success`), and `event` (adapter -> client, unsolicited).
* Each side numbers its own messages with `seq`, starting at 1.
* Responses and events may arrive in any order. debugpy in particular answers `attach` only
  after `configurationDone`, while the `initialized` event (the cue to send breakpoints) comes
  before. So a client must not block reading "the next message" and expect a particular one.

That last point is why this client reads on a background thread and keeps everything it received:
`wait_response` and `wait_event` then just wait (with a timeout) for a matching message to be in
the store, whatever order things arrived in. A timeout raises `DAPTimeout` instead of hanging.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Message = dict[str, Any]


class DAPError(RuntimeError):
    """The adapter answered a request with `success: false` (its `message` says why)."""


class DAPTimeout(TimeoutError):
    """An expected response or event did not arrive in time (a hang is a test failure, not a stall)."""


class DAPClient:
    """A DAP client over one TCP connection to a debug adapter (e.g. `python -m debugpy --listen`).

    Use `DAPClient.connect(host, port)`; then `request(...)` for request/response pairs,
    `wait_event(...)` for events, and `output_text()` for what the debuggee printed through
    `output` events. Call `close()` when done (or use it as a context manager).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()  # the reader thread also sends (replies to reverse requests)
        self._seq = 0
        self._cond = threading.Condition()  # guards everything below; notified on each new message
        self._responses: dict[int, Message] = {}  # request_seq -> response
        self._events: list[Message] = []  # every event, in arrival order
        self._consumed: set[int] = set()  # indices into _events already returned by wait_event
        self._output: list[str] = []  # bodies of `output` events, in order
        self._closed_reason: str | None = None  # set when the connection ends
        self._reader = threading.Thread(target=self._read_loop, name="dap-reader", daemon=True)
        self._reader.start()

    # ---------------------------------------------------------------- connection

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 30.0,
                alive: Callable[[], bool] | None = None) -> DAPClient:
        """Connect, retrying until the adapter listens (it starts a moment after its process does).

        Args:
            host: adapter host, e.g. "127.0.0.1".
            port: adapter port.
            timeout: give up (DAPTimeout) after this many seconds.
            alive: optional check called between tries; if it returns False (the debuggee process
                died before listening), stop retrying at once instead of waiting out the timeout.
        """
        deadline = time.monotonic() + timeout
        last_error: OSError | None = None
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                raise ConnectionError(f"the process behind {host}:{port} exited before accepting a connection")
            try:
                sock = socket.create_connection((host, port), timeout=2.0)
            except OSError as exc:  # refused: nothing is listening yet
                last_error = exc
                time.sleep(0.2)
                continue
            sock.settimeout(None)  # the reader thread blocks in recv; waits are bounded elsewhere
            return cls(sock)
        raise DAPTimeout(f"could not connect to {host}:{port} within {timeout:.0f} s (last error: {last_error})")

    def close(self) -> None:
        """Close the socket; the reader thread then ends on its own."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def __enter__(self) -> DAPClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- sending

    def _send(self, message: Message) -> None:
        body = json.dumps(message).encode("utf-8")
        header = f"Content-Length: {len(body)}\r\n\r\n".encode("ascii")
        with self._send_lock:
            self._sock.sendall(header + body)

    def _next_seq(self) -> int:
        with self._send_lock:
            self._seq += 1
            return self._seq

    def send_request(self, command: str, arguments: Message | None = None) -> int:
        """Send a request without waiting; returns its seq (pass it to `wait_response`).

        Needed for `attach`: debugpy answers it only after `configurationDone`, so the client must
        go on sending (breakpoints, configurationDone) before it can collect that response.
        """
        seq = self._next_seq()
        message: Message = {"seq": seq, "type": "request", "command": command}
        if arguments is not None:
            message["arguments"] = arguments
        self._send(message)
        return seq

    def wait_response(self, seq: int, timeout: float = 30.0) -> Message:
        """Wait for the response to request `seq`; returns its `body` ({} if none).

        Raises:
            DAPError: the adapter answered `success: false`.
            DAPTimeout: no answer within `timeout` seconds.
        """
        with self._cond:
            ok = self._cond.wait_for(lambda: seq in self._responses or self._closed_reason is not None, timeout)
            response = self._responses.get(seq)
            if response is None:
                why = f"connection closed ({self._closed_reason})" if ok else f"no response within {timeout:.0f} s"
                raise DAPTimeout(f"request seq={seq}: {why}")
        if not response.get("success", False):
            raise DAPError(f"{response.get('command')} failed: {response.get('message')} {response.get('body', '')}")
        return response.get("body") or {}

    def request(self, command: str, arguments: Message | None = None, timeout: float = 30.0) -> Message:
        """Send a request and wait for its response; returns the response `body`."""
        return self.wait_response(self.send_request(command, arguments), timeout)

    # ---------------------------------------------------------------- events and output

    def wait_event(self, name: str, timeout: float = 30.0,
                   predicate: Callable[[Message], bool] | None = None) -> Message:
        """Wait for an event named `name` (optionally also matching `predicate(body)`); returns its body.

        Events that arrived earlier count too (nothing is lost between calls), and each event is
        returned at most once, so waiting for `stopped` twice waits for two different stops.
        """

        def find() -> int | None:
            for index, event in enumerate(self._events):
                if index in self._consumed or event.get("event") != name:
                    continue
                if predicate is None or predicate(event.get("body") or {}):
                    return index
            return None

        with self._cond:
            found: list[int] = []

            def ready() -> bool:
                index = find()
                if index is not None:
                    found.append(index)
                    return True
                return self._closed_reason is not None

            if not self._cond.wait_for(ready, timeout) or not found:
                seen = [e.get("event") for e in self._events]
                closed = f"; connection closed ({self._closed_reason})" if self._closed_reason else ""
                raise DAPTimeout(f"no {name!r} event within {timeout:.0f} s{closed}; events seen: {seen}")
            self._consumed.add(found[0])
            return self._events[found[0]].get("body") or {}

    def events(self, name: str | None = None) -> list[Message]:
        """All events received so far (or only those named `name`), consumed or not, as full messages."""
        with self._cond:
            return [e for e in self._events if name is None or e.get("event") == name]

    def output_text(self) -> str:
        """Everything the adapter forwarded as `output` events (the debuggee's stdout/stderr, if redirected)."""
        with self._cond:
            return "".join(self._output)

    # ---------------------------------------------------------------- reading

    def _read_message(self, buffer: bytearray) -> Message | None:
        """Read one framed message (blocking); None when the connection has closed."""
        while b"\r\n\r\n" not in buffer:
            chunk = self._sock.recv(65536)
            if not chunk:
                return None
            buffer += chunk
        header, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        length = None
        for line in header.decode("ascii").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            raise ValueError(f"DAP header without Content-Length: {header!r}")
        buffer[:] = rest
        while len(buffer) < length:
            chunk = self._sock.recv(65536)
            if not chunk:
                return None
            buffer += chunk
        body = bytes(buffer[:length])
        buffer[:] = buffer[length:]
        return json.loads(body.decode("utf-8"))

    def _read_loop(self) -> None:
        buffer = bytearray()
        reason = "adapter closed the connection"
        try:
            while True:
                message = self._read_message(buffer)
                if message is None:
                    break
                self._dispatch(message)
        except OSError as exc:  # includes our own close()
            reason = f"socket error: {exc}"
        except (ValueError, json.JSONDecodeError) as exc:
            reason = f"malformed message: {exc}"
        with self._cond:
            self._closed_reason = reason
            self._cond.notify_all()

    def _dispatch(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "request":
            # A reverse request (e.g. runInTerminal, startDebugging). This client supports none and
            # declared none in `initialize`; answer anyway so the adapter does not wait forever.
            self._send({"seq": self._next_seq(), "type": "response", "request_seq": message.get("seq"),
                        "command": message.get("command"), "success": False,
                        "message": "not supported by this test client"})
            return
        with self._cond:
            if kind == "response":
                self._responses[message.get("request_seq", -1)] = message
            elif kind == "event":
                self._events.append(message)
                if message.get("event") == "output":
                    self._output.append((message.get("body") or {}).get("output", ""))
            self._cond.notify_all()


# --- the debuggee's process (shared by the debugger tests) ---------------------------------------

def free_port() -> int:
    """A port that was free a moment ago (the OS picks it; debugpy binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, chars: int = 6000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill the debuggee and what it started (debugpy's adapter process), by its process group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    else:  # the debuggee is gone; its group may still hold the adapter
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def consecutive_free_ports(count: int = 2, candidates: range | None = None) -> int:
    """The first of `count` consecutive ports that were all free a moment ago.

    Args:
        count: how many consecutive ports (one per rank: base + rank).
        candidates: base ports to try in order; None lets the OS pick bases (ephemeral range).

    Returns:
        The base port.
    """
    bases = iter(candidates) if candidates is not None else (free_port() for _ in range(50))
    for base in bases:
        try:
            for port in range(base, base + count):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as debugpy binds
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports")


def attach(port: int, proc: subprocess.Popen[bytes], bp_file: str | None = None,
           bp_line: int | None = None, timeout: float = 120) -> DAPClient:
    """Attach to a debugpy listener the way VS Code's "attach"/"connect" configuration does.

    Args:
        port: the listener's port on 127.0.0.1.
        proc: the process that will listen (connecting stops early if it dies).
        bp_file, bp_line: one breakpoint to set before configurationDone, or None for none.
        timeout: how long to retry connecting (the listener opens after its process starts).

    Returns:
        The attached client; the debuggee runs on (to the breakpoint, if one was set).
    """
    client = DAPClient.connect("127.0.0.1", port, timeout=timeout, alive=lambda: proc.poll() is None)
    client.request("initialize", {"clientID": "workbook-tests", "adapterID": "debugpy", "pathFormat": "path",
                                  "linesStartAt1": True, "columnsStartAt1": True})
    attach_seq = client.send_request("attach", {"type": "debugpy", "request": "attach", "justMyCode": False,
                                                "redirectOutput": False, "subProcess": False})
    client.wait_event("initialized", timeout=30)
    if bp_file is not None:
        client.request("setBreakpoints", {"source": {"path": bp_file}, "breakpoints": [{"line": bp_line}]})
    client.request("configurationDone")
    client.wait_response(attach_seq, timeout=30)
    return client
