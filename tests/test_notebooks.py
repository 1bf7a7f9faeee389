"""Every notebook executes top to bottom in a real Jupyter kernel, and is committed clean."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from labs.notebooks import NOTEBOOKS_DIR, ExecutedNotebook, execute_notebook

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
_executed: dict[str, ExecutedNotebook] = {}


def executed(name: str, out_dir: Path) -> ExecutedNotebook:
    """Execute each notebook once per test session; several tests read its outputs."""
    if name not in _executed:
        _executed[name] = execute_notebook(NOTEBOOKS_DIR / name, out_dir=out_dir)
    return _executed[name]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"cells {dirty} carry outputs: clear them (executed copies belong in runs/)"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    result = executed(path.name, tmp_path_factory.mktemp("runs"))
    text = result.text_outputs()
    assert "Model:" in text and "Hardware:" in text, "every lab prints its model and hardware"
    assert result.html_path and result.html_path.stat().st_size > 0
    print(f"{path.name}: {result.seconds:.0f} s")


@pytest.mark.notebook
def test_lab1_shows_live_engine_values(tmp_path_factory: pytest.TempPathFactory) -> None:
    text = executed("01_basic_inference.ipynb", tmp_path_factory.mktemp("runs")).text_outputs()
    assert "3. KV blocks" in text and "6. detokenizer" in text
    translations = [line for line in text.splitlines() if "  ->  " in line]
    assert translations and all(line.startswith("✓") for line in translations), translations
