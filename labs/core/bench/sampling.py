"""A background thread that samples something every few tenths of a second while a benchmark runs.

Why a thread (not an asyncio task): the benchmark may run in its own event loop (or in a thread of
a notebook), and a blocking call every `interval_s` must not delay the requests being timed.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class BackgroundSampler:
    """Calls `sample()` at `start()`, every `interval_s` seconds after it, and once more at `stop()`.

    The samples at both edges are there because a starved server (2 busy cores) may answer only one
    or two scrapes during a short run: the series then still shows where it began and ended.

    Subclasses implement `sample()`: it appends a row (with `t_s`, seconds since `start()`) to
    `self.samples`, or nothing if this round had nothing to read. Also a context manager.
    """

    thread_name = "sampler"

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.samples: list[dict[str, Any]] = []
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> Any:
        raise NotImplementedError

    def elapsed_s(self) -> float:
        return time.perf_counter() - self._t0

    def _loop(self) -> None:
        self.sample()
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> BackgroundSampler:
        self.samples.clear()
        self._t0 = time.perf_counter()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Any:
        """Stop sampling; returns `self.df` where the subclass defines one."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self.sample()  # the end state, however slow the last scrapes were
        return getattr(self, "df", None)

    def __enter__(self) -> BackgroundSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
