"""Which of the mini engine's parts are yours: graded, chosen with --parts, or from $LABS_ENGINE."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from labs.core.grading import ENGINE_ENV, ENGINE_PARTS, format_engine_setting, implementation_module_name, \
    parse_engine_setting
from labs.core.environ import environ_set
from labs.core.paths import REPO_ROOT
from labs.progress import ENGINE_PART_TESTS, classify, run_graders


PART_TESTS = ENGINE_PART_TESTS  # each engine part and the graded tests that decide whether yours is used


# --- which parts are yours ------------------------------------------------------------------------

@dataclass
class Parts:
    """The engine's parts: each one's choice for the switch and why it was chosen."""

    choices: dict[str, str]
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def yours(self) -> list[str]:
        return [p for p in ENGINE_PARTS if self.choices.get(p, "solution") != "solution"]

    @property
    def engine_setting(self) -> str:
        return format_engine_setting(self.choices)

    def describe(self) -> str:
        lines = []
        for part in ENGINE_PARTS:
            choice = self.choices.get(part, "solution")
            module = implementation_module_name(part, choice)
            who = "reference" if choice == "solution" else "YOURS" if choice == "learner" else "module"
            reason = self.reasons.get(part, "")
            lines.append(f"  {part:<21} {who:<9} {module}{f'  ({reason})' if reason else ''}")
        return "\n".join(lines)

    def in_play(self) -> str:
        return ", ".join(f"{p}" + ("" if self.choices[p] == "learner" else f"={self.choices[p]}")
                         for p in self.yours) or "none (all reference)"


def parse_parts(spec: str) -> Parts:
    """--parts: "all" (every part yours), "none", or "lab2_kv_cache,lab3_scheduler=some.module"."""
    spec = spec.strip()
    if spec in ("all", "learner"):
        return Parts(dict.fromkeys(ENGINE_PARTS, "learner"), dict.fromkeys(ENGINE_PARTS, "--parts all"))
    if spec in ("none", "solution", ""):
        return Parts(dict.fromkeys(ENGINE_PARTS, "solution"))
    items = [i.strip() for i in spec.split(",") if i.strip()]
    choices = parse_engine_setting(",".join(i if "=" in i else f"{i}=learner" for i in items))
    return Parts(choices, {p: "chosen with --parts" for p, c in choices.items() if c != "solution"})


def grade_parts(grade: str = "learner", known_passed: tuple[str, ...] = (), show_progress: bool = True) -> Parts:
    """Run the graders of the engine's parts (LABS_GRADE=`grade`); the passing ones are used.

    Args:
        grade: whose answers ("learner", or a module path / "solution" to check the mechanism).
        known_passed: parts already known to pass (e.g. `make grade` just graded them): not rerun.
    """
    to_grade = [p for p in ENGINE_PARTS if p not in known_passed]
    run = run_graders([REPO_ROOT / PART_TESTS[p] for p in to_grade], grade, desc="grading your engine's parts",
                      show_progress=show_progress) if to_grade else None
    parts = _parts_from(run, grade, to_grade)
    for part in known_passed:
        parts.choices[part], parts.reasons[part] = grade, "its graders pass"
    return parts


def _parts_from(run: Any, grade: str, graded: list[str]) -> Parts:
    parts = Parts(dict.fromkeys(ENGINE_PARTS, "solution"))
    for part in graded:
        status = classify(run.of_file(PART_TESTS[part]))
        if status.passed:
            parts.choices[part], parts.reasons[part] = grade, f"{PART_TESTS[part]} passes"
        else:
            parts.reasons[part] = f"yours: {status.label}, {PART_TESTS[part]}"
    return parts


def engine_parts(parts: Parts) -> AbstractContextManager[None]:
    """$LABS_ENGINE set to `parts` while the mini engine is built and runs (it reads it every step)."""
    return environ_set({ENGINE_ENV: parts.engine_setting})
