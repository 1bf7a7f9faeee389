"""The grading mechanism itself: the same tests pass the reference and fail a wrong answer, readably."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labs.core.grading import implementation_module_name, load_implementation

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]


def test_choice_of_implementation() -> None:
    assert implementation_module_name("lab1_basic", "solution") == "labs.lab1_basic_inference.solution"
    assert implementation_module_name("lab1_basic", "learner") == "labs.lab1_basic_inference.exercise"
    assert implementation_module_name("lab1_basic", "tests.exercises.broken_lab1") == "tests.exercises.broken_lab1"


def test_learner_file_mirrors_the_reference_signatures() -> None:
    """Every reference function exists in the learner file with the same signature."""
    import inspect

    learner, reference = load_implementation("lab1_basic", "learner"), load_implementation("lab1_basic", "solution")
    public = [n for n, f in inspect.getmembers(reference, inspect.isfunction) if f.__module__ == reference.__name__]
    for name in public:
        assert inspect.signature(getattr(learner, name)) == inspect.signature(getattr(reference, name)), name


@pytest.mark.engine
def test_wrong_answers_fail_with_a_readable_diff() -> None:
    env = {**os.environ, "LABS_GRADE": "tests.exercises.broken_lab1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE / "test_lab1_basic_inference.py"), "-q", "-p", "no:cacheprovider"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:]
    assert "vLLM fed the model a different number of prompt tokens" in out
    assert "vLLM used" in out and "blocks" in out
    assert "holds a different number of bytes per token" in out
    assert "test_greedy_decode_matches_vllm" not in out.split("short test summary")[-1], \
        "the correct exercise must still pass"
