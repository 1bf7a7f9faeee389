"""Which implementation of an exercise the graded tests run: the reference solution or yours.

CS336-style: your file (`labs/exercises/labN_*.py`) starts as stubs that raise
NotImplementedError; `labs/solutions/` holds the reference. The tests in `tests/exercises/`
import whatever this module picks, so CI stays green on the reference while you grade yours:

    make grade LAB=1                       # your answers  (LABS_GRADE=learner)
    pytest tests/exercises                 # the reference (LABS_GRADE=solution, the default)
    LABS_GRADE=some.module pytest ...      # any module with the same functions
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

GRADE_ENV = "LABS_GRADE"


def implementation_module_name(exercise: str, choice: str | None = None) -> str:
    """Module name for `exercise` (e.g. "lab1_basic") under `choice` (default: $LABS_GRADE)."""
    choice = choice or os.environ.get(GRADE_ENV, "solution")
    if choice == "solution":
        return f"labs.solutions.{exercise}"
    if choice == "learner":
        return f"labs.exercises.{exercise}"
    return choice  # an explicit module path


def load_implementation(exercise: str, choice: str | None = None) -> ModuleType:
    return importlib.import_module(implementation_module_name(exercise, choice))
