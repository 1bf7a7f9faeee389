"""Where things are: the repository root is computed here and only here.

Why one place: modules move between folders; a `parents[2]` in each of them breaks silently
when they do. Everything the labs write goes under git-ignored folders of the root.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # labs/core/paths.py -> the repository
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RUNS_DIR = REPO_ROOT / "runs"  # git-ignored: everything the labs and tools write
VENV_BIN = REPO_ROOT / ".venv" / "bin"
