"""The parallel test run's core split (tests/workers.py): each worker's engines on its own cores, TP tests on all."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.workers import BIND_ENV, WORKER_BIND_ENV, allowed_cores, cores_of_worker, group_of, on_own_cores


def test_cores_are_split_into_contiguous_disjoint_shares() -> None:
    assert [cores_of_worker([0, 1], i, 2) for i in range(2)] == [[0], [1]]
    assert [cores_of_worker(list(range(5)), i, 2) for i in range(2)] == [[0, 1, 2], [3, 4]]
    assert [cores_of_worker([0, 1, 2, 3], i, 3) for i in range(3)] == [[0, 1], [2], [3]]
    assert cores_of_worker([7], 1, 2) == [7], "more workers than cores: share the one there is"
    assert [cores_of_worker([0, 1], i, 3) for i in range(3)] == [[0], [1], [0]], "one core each, shared round robin"


def test_this_workers_engines_bind_to_its_share() -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None or WORKER_BIND_ENV not in os.environ:
        pytest.skip("not under pytest-xdist with the workbook's binding (make test runs it with -n auto)")
    expected = cores_of_worker(allowed_cores(), int(worker.removeprefix("gw")), int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    assert os.environ[BIND_ENV] == ",".join(map(str, expected))


@pytest.mark.all_cores
def test_an_all_cores_test_has_no_worker_binding_and_fixtures_can_take_it_back() -> None:
    if WORKER_BIND_ENV not in os.environ:
        pytest.skip("not under pytest-xdist with the workbook's binding")
    assert BIND_ENV not in os.environ, "TP=2 must get the workbook's one-core-per-rank binding"
    with on_own_cores():
        assert os.environ[BIND_ENV] == os.environ[WORKER_BIND_ENV]
    assert BIND_ENV not in os.environ


def test_groups_from_node_ids() -> None:
    assert group_of("tests/test_notebooks.py::test_notebook_executes[06_profiling.ipynb]") == "notebook-06_profiling.ipynb"
    assert group_of("tests/test_notebooks.py::test_notebook_runs_again_in_the_same_working_copy[06_profiling.ipynb]") \
        == "notebook-06_profiling.ipynb"
    assert group_of("tests/test_notebooks.py::test_lab1_shows_live_engine_values") == "notebook-01_basic_inference.ipynb"
    assert group_of("tests/test_ipdb.py::test_x") == group_of("tests/test_lab4_tensor_parallel_debug_ports.py::test_y") == "debuggers"
    assert group_of("tests/exercises/test_lab2_kv_cache.py::test_z[a::b]") == "tests/exercises/test_lab2_kv_cache.py"
    assert group_of("tests/exercises/test_lab4_tensor_parallel.py::test_w") == "debuggers", "shares vLLM's cached TP=2 run"
    assert group_of("tests/exercises/test_lab9_multi_lora.py::test_v") == "tests/exercises/test_lab9_multi_lora.py"
    assert group_of("tests/test_lab6_profiling.py::test_u") == group_of("tests/test_lab6_profiling_predictions.py::test_t")


def test_a_notebooks_tests_share_one_group(request: pytest.FixtureRequest) -> None:
    items = [i for i in request.session.items if i.path.name == "test_notebooks.py"]
    if not items:
        pytest.skip("tests/test_notebooks.py is not collected in this run")
    groups = {group_of(i.nodeid) for i in items if "02_paged_attention.ipynb" in i.nodeid}
    assert groups == {"notebook-02_paged_attention.ipynb"}


def test_workers_take_notebooks_then_heavy_modules_then_light_ones() -> None:
    """Collected as a worker does: light modules (no engine, server, kernel) go last, so they fill the
    end of the run while the other worker finishes, instead of a server module running alone."""
    light, heavy, notebooks = "tests/test_hardware.py", "tests/test_bench.py", "tests/test_notebooks.py"
    env = {**os.environ, "PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "2"}
    env.pop(BIND_ENV, None)
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           light, heavy, notebooks], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    files = [line.split("::")[0] for line in done.stdout.splitlines() if "::" in line]
    order = [f for i, f in enumerate(files) if i == 0 or files[i - 1] != f]
    assert order == [notebooks, heavy, light], order
