"""Which implementation of an exercise runs: the reference solution or yours.

CS336-style: each lab folder holds the learner's file (`labs/<lab>/exercise*.py`, stubs that
raise NotImplementedError) beside the reference (`solution*.py`). Everything that uses an
exercise's functions (the graded tests in `tests/exercises/`, the mini engine, the Lab 4 and 5
code, the capstone's chunker) asks this switch for them, so CI stays green on the reference
while you grade yours:

    make grade LAB=1                       # your answers  (LABS_GRADE=learner)
    make grade LAB=capstone                # the capstone's (labs/capstone_translation/exercise.py)
    pytest tests/exercises                 # the reference (LABS_GRADE=solution, the default)
    LABS_GRADE=some.module pytest ...      # any module with the same functions

Why names and not imports: the shared core (the mini engine) must not import a lab; it names
the exercise, and the switch loads the module the learner chose.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

GRADE_ENV = "LABS_GRADE"

# exercise -> (lab package, file suffix): "learner" loads exercise<suffix>, "solution" solution<suffix>
EXERCISES: dict[str, tuple[str, str]] = {
    "lab1_basic": ("labs.lab1_basic_inference", ""),
    "lab2_kv_cache": ("labs.lab2_paged_attention", "_kv_cache"),
    "lab2_paged_attention": ("labs.lab2_paged_attention", "_paged_attention"),
    "lab3_scheduler": ("labs.lab3_continuous_batching", ""),
    "lab4_tensor_parallel": ("labs.lab4_tensor_parallel", ""),
    "lab5_kv_quant": ("labs.lab5_kv_quantization", ""),
    "lab6_profiling": ("labs.lab6_profiling", ""),
    "lab7_spec_decode": ("labs.lab7_speculative_decoding", ""),
    "lab8_structured": ("labs.lab8_structured_outputs", ""),
    "lab9_lora": ("labs.lab9_multi_lora", ""),
    "lab10_failures": ("labs.lab10_failure_injection", ""),
    "capstone_chunking": ("labs.capstone_translation", ""),
}


def implementation_module_name(exercise: str, choice: str | None = None) -> str:
    """Module name for `exercise` (a key of EXERCISES) under `choice` (default: $LABS_GRADE).

    Args:
        exercise: e.g. "lab2_kv_cache".
        choice: "solution", "learner", or an explicit module path; None reads $LABS_GRADE.

    Returns:
        A dotted module name, e.g. "labs.lab2_paged_attention.solution_kv_cache".
    """
    choice = choice or os.environ.get(GRADE_ENV, "solution")
    if choice not in ("solution", "learner"):
        return choice  # an explicit module path
    if exercise not in EXERCISES:
        raise KeyError(f"unknown exercise {exercise!r}; known: {', '.join(EXERCISES)}")
    package, suffix = EXERCISES[exercise]
    return f"{package}.{'exercise' if choice == 'learner' else 'solution'}{suffix}"


def load_implementation(exercise: str, choice: str | None = None) -> ModuleType:
    """The module `implementation_module_name` names, imported."""
    return importlib.import_module(implementation_module_name(exercise, choice))


def reference(exercise: str) -> ModuleType:
    """The reference solution of `exercise`, whatever $LABS_GRADE says.

    Why: parts of the engine that a lab does not grade (e.g. Lab 3's scheduler while you grade
    Lab 2) must stay the reference, so one learner stub cannot break another lab's checks.
    """
    return load_implementation(exercise, "solution")


ENGINE_ENV = "LABS_ENGINE"

# The exercises the mini engine is assembled from (labs/core/mini/engine.py, attention.py, and
# tensor_parallel.py when the engine splits its MLPs over ranks).
ENGINE_PARTS: tuple[str, ...] = ("lab2_kv_cache", "lab2_paged_attention", "lab3_scheduler", "lab4_tensor_parallel")


def parse_engine_setting(setting: str | None) -> dict[str, str]:
    """Each engine part's choice ("solution", "learner" or a module path) under a $LABS_ENGINE value.

    Accepted values:
        "" / None / "solution"   every part the reference (the default)
        "learner"                every part from your labs/<lab>/exercise*.py
        "some.module"            every part from that module (it defines all three)
        "lab2_kv_cache=learner,lab3_scheduler=tests.exercises.broken_kv_cache"
                                 per part; parts not named are the reference

    Raises:
        ValueError: a per-part setting names an unknown part or no choice.
    """
    setting = (setting or "").strip()
    if "=" not in setting:
        return dict.fromkeys(ENGINE_PARTS, setting or "solution")
    choices = dict.fromkeys(ENGINE_PARTS, "solution")
    for item in filter(None, (i.strip() for i in setting.split(","))):
        part, _, choice = (x.strip() for x in item.partition("="))
        if part not in ENGINE_PARTS or not choice:
            raise ValueError(f"{ENGINE_ENV}={setting!r}: {item!r} is not <part>=<choice> with a part among "
                             f"{', '.join(ENGINE_PARTS)} and a choice solution, learner or a module path")
        choices[part] = choice
    return choices


def format_engine_setting(choices: dict[str, str]) -> str:
    """The $LABS_ENGINE value that selects `choices` (the inverse of `parse_engine_setting`)."""
    choices = {part: choices.get(part, "solution") for part in ENGINE_PARTS}
    if len(set(choices.values())) == 1:
        return next(iter(choices.values()))
    return ",".join(f"{part}={choice}" for part, choice in choices.items() if choice != "solution")


def engine_choices() -> dict[str, str]:
    """`parse_engine_setting` of the current $LABS_ENGINE."""
    return parse_engine_setting(os.environ.get(ENGINE_ENV))


def engine_part(exercise: str) -> ModuleType:
    """The implementation the mini engine is assembled from: the reference unless $LABS_ENGINE says.

    Why a second switch: `make grade LAB=5` (LABS_GRADE=learner) runs the mini engine, which must
    not pick up the still-unanswered stubs of Labs 2 and 3. `LABS_ENGINE=learner` builds the
    engine from the learner's own block manager, scheduler and paged attention;
    `LABS_ENGINE=lab2_kv_cache=learner` only the block manager (see `parse_engine_setting`).

    Args:
        exercise: "lab2_kv_cache", "lab2_paged_attention" or "lab3_scheduler".
    """
    setting = os.environ.get(ENGINE_ENV) or "solution"
    if exercise not in ENGINE_PARTS:  # not one of the engine's parts: a one-word setting still applies
        return load_implementation(exercise, "solution" if "=" in setting else setting)
    return load_implementation(exercise, parse_engine_setting(setting)[exercise])
