"""Execute notebooks headless in a real Jupyter kernel: used by `make tour` and the tests.

Why nbclient: it runs every cell in a real ipykernel, exactly as JupyterLab would, and raises
on the first failing cell with that cell's traceback.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from queue import Empty
from typing import Any

import nbformat
from nbclient import NotebookClient

from labs.core.paths import NOTEBOOKS_DIR


@dataclass(frozen=True)
class ExecutedNotebook:
    notebook: nbformat.NotebookNode
    seconds: float
    ipynb_path: Path | None
    html_path: Path | None

    def text_outputs(self) -> str:
        """Everything the cells printed or displayed as text, for checks and summaries."""
        parts = []
        for cell in self.notebook.cells:
            for out in cell.get("outputs", []):
                parts.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
        return "\n".join(parts)

    def cell_seconds(self) -> list[tuple[int, float, str]]:
        """(cell index, seconds, first source line) of each executed code cell, from nbclient's timing.

        Why: a notebook that takes ten times longer than usual says which cell waited.
        """
        rows = []
        for index, cell in enumerate(self.notebook.cells):
            timing = cell.get("metadata", {}).get("execution", {})
            began, ended = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
            if cell.cell_type == "code" and began and ended:
                seconds = (datetime.fromisoformat(ended.replace("Z", "+00:00"))
                           - datetime.fromisoformat(began.replace("Z", "+00:00"))).total_seconds()
                rows.append((index, seconds, next(iter(cell.source.splitlines()), "")))
        return rows


POLL_SLICE_S = 5.0  # the longest a missed wake-up can hold a run (see SlicedPollClient)


def sliced_get_msg(get_msg: Callable[..., Awaitable[dict[str, Any]]],
                   slice_s: float = POLL_SLICE_S) -> Callable[..., Awaitable[dict[str, Any]]]:
    """`get_msg(timeout)` of a kernel channel, polled in slices of at most `slice_s` seconds.

    Why: a channel waits for its ZeroMQ socket's file descriptor to wake the event loop, and that
    wake-up is edge-triggered; when it is missed, the message sits in the socket until the poll's
    timeout, whose final zero-time poll finds it. nbclient polls the shell channel with the whole
    cell timeout, so one missed wake-up holds a notebook for that timeout (600 s) between two cells,
    the kernel idle, and then the run goes on as if nothing happened (the cells' `execution`
    timestamps in the executed notebook show the gap). Slices bound the loss to `slice_s`; the
    caller's own timeout still holds.
    """
    async def get_msg_in_slices(timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            wait_s = slice_s if remaining is None else min(slice_s, remaining)
            try:
                return await get_msg(timeout=wait_s)
            except Empty:
                if remaining is not None and remaining <= slice_s:
                    raise

    return get_msg_in_slices


class SlicedPollClient(NotebookClient):
    """nbclient's client with its kernel channels polled in slices (see `sliced_get_msg`)."""

    async def async_start_new_kernel_client(self) -> Any:
        kc = await super().async_start_new_kernel_client()
        for channel in (kc.shell_channel, kc.iopub_channel):
            channel.get_msg = sliced_get_msg(channel.get_msg)
        return kc


def execute_notebook(path: Path, out_dir: Path | None = None, timeout_per_cell: int = 600,
                     env: dict[str, str] | None = None) -> ExecutedNotebook:
    """Run every cell of `path` with the notebook's folder as working directory.

    Args:
        path: the notebook.
        out_dir: if given, the executed notebook and an HTML copy are written there.
        timeout_per_cell: seconds before a single cell counts as hung.
        env: variables to set in the kernel's environment on top of ours (e.g. VLLM_MODEL), so one
            process can run a notebook on another model without changing its own environment.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell failed (the message shows which and why).
    """
    nb = nbformat.read(path, as_version=4)
    client = SlicedPollClient(nb, timeout=timeout_per_cell, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.monotonic()
    try:
        client.execute(**({"env": {**os.environ, **env}} if env else {}))
    finally:
        seconds = time.monotonic() - start
        ipynb_path = html_path = None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            ipynb_path = out_dir / path.name
            nbformat.write(nb, ipynb_path)
            from nbconvert import HTMLExporter

            html, _ = HTMLExporter().from_notebook_node(nb)
            html_path = ipynb_path.with_suffix(".html")
            html_path.write_text(html, encoding="utf-8")
    return ExecutedNotebook(nb, seconds, ipynb_path, html_path)
