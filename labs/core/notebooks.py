"""Execute notebooks headless in a real Jupyter kernel: used by `make tour` and the tests.

Why nbclient: it runs every cell in a real ipykernel, exactly as JupyterLab would, and raises
on the first failing cell with that cell's traceback.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

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
    client = NotebookClient(nb, timeout=timeout_per_cell, kernel_name="python3",
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
