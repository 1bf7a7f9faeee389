"""Your engine (labs/your_engine/) and `make progress` (labs/progress.py): they must be able to fail.

- the reference parts, assembled into the mini engine, give vLLM's tokens on all 320 phrasebook
  prompts in each setting, and each setting really preempts / hits the prefix cache;
- a wrong block manager selected through the switch ($LABS_ENGINE, an explicit module path) is
  caught, and the report names the first differing prompt, token and part in play;
- `make progress` says "not started" for the shipped stubs and "passed" for the reference graded
  in the learner's place.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from labs import progress, your_engine
from labs.core.grading import ENGINE_PARTS, engine_part, format_engine_setting, parse_engine_setting
from labs.core.models.phrasebook import load_phrasebook

REPO_ROOT = Path(__file__).resolve().parents[1]
BROKEN = "tests.exercises.broken_kv_cache"
BROKEN_TP = "tests.exercises.broken_lab4"


def run_module(*args: str, env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("LABS_ENGINE", "LABS_GRADE")}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


# --- the switch -----------------------------------------------------------------------------------

def test_engine_setting_per_part(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_engine_setting(None) == dict.fromkeys(ENGINE_PARTS, "solution")
    assert parse_engine_setting("learner") == dict.fromkeys(ENGINE_PARTS, "learner")
    choices = parse_engine_setting(f"lab2_kv_cache={BROKEN}, lab3_scheduler=learner")
    assert choices == {"lab2_kv_cache": BROKEN, "lab2_paged_attention": "solution", "lab3_scheduler": "learner",
                       "lab4_tensor_parallel": "solution"}
    assert parse_engine_setting(format_engine_setting(choices)) == choices
    with pytest.raises(ValueError, match="lab9_x"):
        parse_engine_setting("lab9_x=learner")

    monkeypatch.setenv("LABS_ENGINE", f"lab2_kv_cache={BROKEN}")
    assert engine_part("lab2_kv_cache").__name__ == BROKEN
    assert engine_part("lab3_scheduler").__name__ == "labs.lab3_continuous_batching.solution"
    monkeypatch.setenv("LABS_ENGINE", "learner")  # the one-word setting keeps its old meaning
    assert engine_part("lab3_scheduler").__name__ == "labs.lab3_continuous_batching.exercise"
    monkeypatch.delenv("LABS_ENGINE")
    assert engine_part("lab2_kv_cache").__name__ == "labs.lab2_paged_attention.solution_kv_cache"


def test_grade_for_a_lab_without_engine_parts_says_so_in_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    assert your_engine.main(["--after-lab", "5"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "Lab 5 has no part in the mini engine" in out


# --- the comparison with vLLM ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm_reference_file(llm: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vLLM's own greedy outputs on the 320 prompts (the session's engine), for the command to compare with.

    The comparisons run in subprocesses: once vLLM has run in a process, its CPU thread binding
    slows the mini engine there ~10x.
    """
    reference = your_engine.reference_from_vllm(llm)
    assert len(reference.output_token_ids) == len(load_phrasebook()) == 320
    path = tmp_path_factory.mktemp("your-engine") / "vllm.json"
    path.write_text(json.dumps(reference.__dict__))
    return path


@pytest.mark.engine
def test_reference_parts_give_vllm_tokens_in_every_setting(vllm_reference_file: Path) -> None:
    proc = run_module("labs.your_engine", "--parts", "none", "--reference-file", str(vllm_reference_file))
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    for name in your_engine.SETTINGS:
        assert re.search(rf"^{name}\s+320/320 equal", out, re.M), out
    preemptions = int(re.search(r"^scarce-kv-blocks .* (\d+) preemptions", out, re.M).group(1))
    assert preemptions > 0, out
    hits = int(re.search(r"^prefix-caching .* (\d+) prompts hit the prefix cache", out, re.M).group(1))
    assert hits > 0, out
    assert "your parts in play: none (all reference)" in out


@pytest.mark.engine
def test_a_wrong_block_manager_is_named_with_the_first_differing_prompt_and_token(vllm_reference_file: Path) -> None:
    proc = run_module("labs.your_engine", "--settings", "default", "--reference-file", str(vllm_reference_file),
                      env={"LABS_ENGINE": f"lab2_kv_cache={BROKEN}"})
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:] + proc.stderr[-3000:]
    victim, owner = map(int, re.search(r"request (\d+) got block \d+ of request (\d+)", proc.stderr).groups())
    assert re.search(r"^default\s+3\d\d/320 equal", out, re.M) and "320/320" not in out, out
    found = re.search(r"first difference: prompt (\d+) '(.+)', output token (\d+): yours (\d+) '.*', vLLM (\d+) '.*'",
                      out)
    assert found, out
    index = int(found.group(1))
    assert index in (victim, owner), f"the report names prompt {index}, the broken manager hit {victim} and {owner}"
    assert found.group(2) == load_phrasebook()[index].ja
    reference = your_engine.load_reference(vllm_reference_file)
    position = int(found.group(3))
    assert int(found.group(5)) == reference.output_token_ids[index][position]
    assert found.group(4) != found.group(5)
    assert f"your parts in play: lab2_kv_cache={BROKEN}" in out
    assert f"lab2_kv_cache         module    {BROKEN}" in out


@pytest.mark.engine
def test_a_wrong_tensor_parallel_mlp_is_caught_in_the_tp_setting(vllm_reference_file: Path) -> None:
    """Lab 4's part: the MLPs split over 2 rank threads; an extra all-reduce (tests/exercises/broken_lab4.py)."""
    proc = run_module("labs.your_engine", "--settings", "tensor-parallel-2", "--reference-file", str(vllm_reference_file),
                      "--parts", f"lab4_tensor_parallel={BROKEN_TP}")
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^tensor-parallel-2\s+\d+/320 equal", out, re.M) and "320/320" not in out, out
    assert f"your parts in play: lab4_tensor_parallel={BROKEN_TP}" in out


def test_thread_all_reduce_sums_in_rank_order_and_names_a_missing_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import torch

    from labs.core.mini import tensor_parallel

    reduce = tensor_parallel.ThreadAllReduce(2)
    tensors = [torch.tensor([1.0, 2.0]), torch.tensor([10.0, 20.0])]
    threads = [threading.Thread(target=reduce.for_rank(r), args=(tensors[r],)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(torch.equal(t, torch.tensor([11.0, 22.0])) for t in tensors)
    monkeypatch.setattr(tensor_parallel, "ALL_REDUCE_TIMEOUT_S", 0.2)
    lonely = tensor_parallel.ThreadAllReduce(2)
    with pytest.raises(RuntimeError, match="rank 0 waited .* every rank must call all_reduce the same number"):
        lonely.for_rank(0)(torch.zeros(2))


def test_smoke_run_catches_a_wrong_block_manager() -> None:
    parts = your_engine.Parts({**dict.fromkeys(ENGINE_PARTS, "solution"), "lab2_kv_cache": BROKEN})
    line = your_engine.smoke(parts)
    assert "differs from the reference engine: prompt 0" in line or "prompt 1" in line, line
    assert BROKEN in line
    assert your_engine.smoke(your_engine.parse_parts("none")).startswith("runs on the reference parts")


# --- make progress --------------------------------------------------------------------------------

def outcome(name: str, passed: bool, not_implemented: bool = False) -> progress.TestOutcome:
    return progress.TestOutcome(f"tests/exercises/test_lab9_x.py::{name}", passed=passed,
                                not_implemented=not_implemented, done=True)


def test_classification() -> None:
    self_check = outcome("test_learner_file_mirrors_the_reference", True)
    stub = outcome("test_a", False, not_implemented=True)
    assert progress.classify([self_check, stub, outcome("test_b", False, True)]).label == "not started"
    assert progress.classify([self_check, outcome("test_a", True), outcome("test_b", True)]).label == "passed"
    assert progress.classify([self_check, outcome("test_a", True), stub]).label == "failed (2 of 3 tests pass)"
    assert progress.classify([self_check, outcome("test_a", False)]).label == "failed (1 of 2 tests pass)"
    assert progress.classify([]).label == "no tests ran"
    premise = outcome("test_grader_premise_the_counts_hold_in_vllm", True)  # checks vLLM, not the learner
    assert progress.classify([premise, stub]).label == "not started"


def _lab2_is_untouched() -> bool:
    files = ["labs/lab2_paged_attention/exercise_kv_cache.py", "labs/lab2_paged_attention/exercise_paged_attention.py",
             "labs/lab3_continuous_batching/exercise.py", "labs/lab4_tensor_parallel/exercise.py"]
    return subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *files], cwd=REPO_ROOT).returncode == 0


def test_progress_on_the_shipped_stubs_says_not_started() -> None:
    if not _lab2_is_untouched():
        pytest.skip("the Lab 2/3 exercise files are edited here: not a fresh clone")
    proc = run_module("labs.progress", "--labs", "2")
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^Lab 2: paged attention\s+not started\s+\(kv_cache: not started, paged_attention: not started\)",
                     out, re.M), out
    assert re.search(r"^Your engine\s+runs on the reference parts", out, re.M), out


def test_progress_with_the_reference_in_the_learners_place_says_passed() -> None:
    proc = run_module("labs.progress", "--labs", "2", "--grade", "solution", "--no-engine")
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^Lab 2: paged attention\s+passed\s+\(kv_cache: passed, paged_attention: passed\)", out, re.M), out
    assert "Your engine" not in out
