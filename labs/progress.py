"""`make progress`: where you stand, read from the graders themselves (nothing stored).

    python -m labs.progress                  # every lab, your answers (LABS_GRADE=learner)
    python -m labs.progress --labs 2,3       # some labs only (`capstone`: the capstone's exercise)
    python -m labs.progress --grade solution # the reference in your place: everything passes

Runs each lab's graded tests (tests/exercises/test_labN_*.py; the capstone's: test_capstone_*.py)
once, in one pytest process, and classifies every lab from the outcome of each test:
    passed        every test passes
    not started   every failing test failed with NotImplementedError (the stub's own error) and
                  the only passing tests are the graders' self-checks (they pass without your code)
    failed (k of n tests pass)   anything else
then smoke-runs "your engine": the mini engine built from the parts whose graders pass (see
labs/your_engine/), on a few prompts, against the same engine built from the references.

This module is also the pytest plugin (`-p labs.progress`) that reports each test's outcome to
the table, one JSON line per test, in the file $LABS_PROGRESS_LOG.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labs.core.paths import REPO_ROOT

EXERCISE_TESTS = REPO_ROOT / "tests" / "exercises"
PROGRESS_LOG_ENV = "LABS_PROGRESS_LOG"
# The mini engine's parts and the graded tests that decide whether yours is used (labs/your_engine/).
ENGINE_PART_TESTS: dict[str, str] = {
    "lab2_kv_cache": "tests/exercises/test_lab2_kv_cache.py",
    "lab2_paged_attention": "tests/exercises/test_lab2_paged_attention.py",
    "lab3_scheduler": "tests/exercises/test_lab3_continuous_batching.py",
    "lab4_tensor_parallel": "tests/exercises/test_lab4_tensor_parallel.py",
}
# Labs by number; the capstone (no number) by its name, as `make grade LAB=capstone` takes it.
LAB_TITLES: dict[int | str, str] = {
    1: "basic inference", 2: "paged attention", 3: "continuous batching", 4: "tensor parallel",
    5: "KV quantization", 6: "profiling", 7: "speculative decoding", 8: "structured outputs",
    9: "multi-LoRA", 10: "failure injection", "capstone": "translation"}
# Tests that check the grader itself (it fails planted wrong answers; its premise holds in vLLM;
# your file has the reference's signatures): they pass on the untouched stubs, so they do not
# count as a start.
SELF_CHECK = re.compile(r"test_grader_|test_learner_file_mirrors_the_reference")


# --- the pytest plugin side (runs inside the graders' pytest process) ---------------------------

def _is_not_implemented(report: Any) -> bool:
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    if crash is not None:  # the error itself, or one that reports it (a Lab 4 rank's RankFailedError)
        return "NotImplementedError" in crash.message
    return "NotImplementedError" in getattr(report, "longreprtext", "")


def pytest_collection_finish(session: Any) -> None:
    path = os.environ.get(PROGRESS_LOG_ENV)
    if path:
        with open(path, "a") as log:
            log.write(json.dumps({"collected": [item.nodeid for item in session.items]}) + "\n")


def pytest_runtest_logreport(report: Any) -> None:
    path = os.environ.get(PROGRESS_LOG_ENV)
    if not path:
        return
    with open(path, "a") as log:
        log.write(json.dumps({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                              "not_implemented": report.failed and _is_not_implemented(report),
                              "duration": report.duration}) + "\n")


# --- the table side ------------------------------------------------------------------------------

@dataclass
class TestOutcome:
    nodeid: str
    passed: bool = True  # until a phase fails
    skipped: bool = False
    not_implemented: bool = False  # failed, with NotImplementedError
    done: bool = False
    duration: float = 0.0

    @property
    def self_check(self) -> bool:
        return bool(SELF_CHECK.search(self.nodeid))


@dataclass
class GraderRun:
    """What one pytest run of some graders gave, test by test."""

    outcomes: dict[str, TestOutcome] = field(default_factory=dict)
    returncode: int = 0
    output: str = ""  # pytest's own output, for a crash report
    seconds: float = 0.0

    def of_file(self, test_file: str | Path) -> list[TestOutcome]:
        name = Path(test_file).name
        return [o for nodeid, o in self.outcomes.items() if nodeid.split("::")[0].endswith(name)]


def run_graders(test_files: list[Path], grade: str = "learner", desc: str = "grading",
                show_progress: bool = True) -> GraderRun:
    """Run the graded tests `test_files` with LABS_GRADE=`grade` in a pytest subprocess.

    Args:
        test_files: tests/exercises/test_lab*.py files.
        grade: "learner" (your answers), "solution", or a module path (any $LABS_GRADE value).
        desc: the progress bar's label.
        show_progress: a tqdm bar of finished tests on stderr.

    Returns:
        Each collected test's outcome (tests that never reported count as failed).
    """
    from tqdm import tqdm

    with tempfile.TemporaryDirectory(prefix="labs-progress-") as tmp:
        log_path = Path(tmp) / "outcomes.jsonl"
        log_path.touch()
        env = {**os.environ, "LABS_GRADE": grade, PROGRESS_LOG_ENV: str(log_path)}
        env.pop("LABS_ENGINE", None)  # graders of Labs 4-6 run the engine on the references, as `make grade` does
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "labs.progress",
               *map(str, test_files)]
        run = GraderRun()
        start = time.monotonic()
        with open(Path(tmp) / "pytest.out", "w+") as out, \
                tqdm(total=0, desc=desc, unit="test", disable=not show_progress, leave=False) as bar:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
            read = 0
            while True:
                finished = proc.poll() is not None
                with open(log_path) as log:
                    log.seek(read)
                    lines = log.readlines()
                    if lines and not lines[-1].endswith("\n"):  # half-written: read it next time
                        lines.pop()
                    read += sum(len(line) for line in lines)
                for line in lines:
                    _absorb(run, json.loads(line), bar)
                if finished:
                    break
                time.sleep(0.2)
            run.returncode = proc.returncode
            out.seek(0)
            run.output = out.read()
        run.seconds = time.monotonic() - start
    for outcome in run.outcomes.values():
        if not outcome.done:  # collected but never reported: pytest died under it
            outcome.passed = False
    return run


def _absorb(run: GraderRun, event: dict[str, Any], bar: Any) -> None:
    if "collected" in event:
        for nodeid in event["collected"]:
            run.outcomes.setdefault(nodeid, TestOutcome(nodeid))
        bar.total = len(run.outcomes)
        bar.refresh()
        return
    outcome = run.outcomes.setdefault(event["nodeid"], TestOutcome(event["nodeid"]))
    outcome.duration += event["duration"]
    if event["outcome"] == "failed":
        # A setup error (no NotImplementedError) outranks nothing; keep the first failure's kind.
        outcome.not_implemented = event["not_implemented"] if outcome.passed else outcome.not_implemented
        outcome.passed = False
    elif event["outcome"] == "skipped":
        outcome.skipped = True
    if event["when"] == "teardown":
        outcome.done = True
        bar.update(1)


@dataclass
class Status:
    """One lab's (or one test file's) verdict."""

    label: str  # "passed", "not started", "failed (k of n tests pass)", "no tests ran"
    num_passed: int
    num_tests: int

    @property
    def passed(self) -> bool:
        return self.label == "passed"


def classify(outcomes: list[TestOutcome]) -> Status:
    """passed / not started / failed (k of n tests pass), from the graders' outcomes (module docstring)."""
    n = len(outcomes)
    passed = [o for o in outcomes if o.passed]
    failed = [o for o in outcomes if not o.passed]
    if not n:
        return Status("no tests ran", 0, 0)
    if not failed:
        return Status("passed", len(passed), n)
    if all(o.not_implemented for o in failed) and all(o.self_check for o in passed):
        return Status("not started", len(passed), n)
    return Status(f"failed ({len(passed)} of {n} tests pass)", len(passed), n)


def engine_parts_passed(run: GraderRun) -> list[str]:
    """The engine's parts whose graders ran in `run` and all pass."""
    return [part for part, test in ENGINE_PART_TESTS.items()
            if run.of_file(test) and classify(run.of_file(test)).passed]


def smoke_your_engine(run: GraderRun, grade: str) -> str:
    """`python -m labs.your_engine --smoke` with the parts that passed in `run`: one line for the table.

    A subprocess: the smoke run must not inherit anything from this process (and labs.your_engine,
    which uses this module, is not imported here).
    """
    passed = engine_parts_passed(run)
    spec = ",".join(f"{part}={grade}" for part in passed) if grade != "solution" and passed else "none"
    print("Smoke-running your engine ...", flush=True)
    proc = subprocess.run([sys.executable, "-m", "labs.your_engine", "--smoke", "--parts", spec],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "LABS_ENGINE"})
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return f"CRASHED:\n{(proc.stdout + proc.stderr)[-2000:]}"
    return lines[-1]


def grader_prefix(lab: int | str) -> str:
    """The graded tests' file name prefix: `test_lab7_` for Lab 7, `test_capstone_` for the capstone."""
    return f"test_lab{lab}_" if isinstance(lab, int) else f"test_{lab}_"


def lab_test_files(lab: int | str) -> list[Path]:
    """The graded tests of `lab` (a number, or "capstone"), as `make grade LAB=...` runs them."""
    return sorted(EXERCISE_TESTS.glob(f"{grader_prefix(lab)}*.py"))


def lab_label(lab: int | str) -> str:
    """The table's row name: "Lab 7: speculative decoding", "Capstone: translation"."""
    return f"{'Lab ' + str(lab) if isinstance(lab, int) else str(lab).capitalize()}: {LAB_TITLES.get(lab, '')}"


def parse_labs(value: str) -> list[int | str]:
    """`--labs` as numbers and names: "2,3,capstone" -> [2, 3, "capstone"]."""
    return [int(x) if x.strip().isdigit() else x.strip() for x in value.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.progress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--labs", default=",".join(map(str, LAB_TITLES)),
                        help="comma-separated lab numbers, and `capstone` (default: all)")
    parser.add_argument("--grade", default="learner",
                        help="whose answers: learner (yours, default), solution, or a module path")
    parser.add_argument("--no-engine", action="store_true", help="skip the smoke run of your engine")
    args = parser.parse_args(argv)
    labs = parse_labs(args.labs)
    files = {lab: lab_test_files(lab) for lab in labs}
    print(f"Running the graders of lab{'s' if len(labs) > 1 else ''} {', '.join(map(str, labs))} "
          f"on {'your answers' if args.grade == 'learner' else args.grade} (LABS_GRADE={args.grade}) ...",
          flush=True)
    test_files = [f for fs in files.values() for f in fs]
    if not args.no_engine:  # the engine's parts are graded in the same run, whichever labs are shown
        test_files += [REPO_ROOT / t for t in ENGINE_PART_TESTS.values() if REPO_ROOT / t not in test_files]
    run = run_graders(test_files, args.grade, desc="graders")
    if not run.outcomes:
        print(run.output[-3000:])
        print("pytest collected no tests: see its output above")
        return 2

    rows = []
    for lab in labs:
        outcomes = [o for f in files[lab] for o in run.of_file(f)]
        status = classify(outcomes)
        per_file = "" if len(files[lab]) < 2 else "  (" + ", ".join(
            f"{f.stem.removeprefix(grader_prefix(lab))}: {classify(run.of_file(f)).label}" for f in files[lab]) + ")"
        rows.append((lab_label(lab), f"{status.label}{per_file}",
                     f"{len(outcomes)} tests, {sum(o.duration for o in outcomes):.0f}s"))
    if not args.no_engine:
        rows.append(("Your engine", smoke_your_engine(run, args.grade), ""))

    width = max(len(r[0]) for r in rows)
    print(f"\n{'':<{width}}  status")
    for name, label, note in rows:
        print(f"{name:<{width}}  {label}{f'   [{note}]' if note else ''}")
    print(f"\n(graders: {run.seconds:.0f}s; `make grade LAB=N` or LAB=capstone shows its failures in full)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
