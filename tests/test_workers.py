"""The parallel test run's core split (tests/workers.py): each worker its own cores, TP tests all of them."""

from __future__ import annotations

import os

import pytest

from tests.workers import allowed_cores, cores_of_worker, group_of


def test_cores_are_split_into_contiguous_disjoint_shares() -> None:
    assert [cores_of_worker([0, 1], i, 2) for i in range(2)] == [[0], [1]]
    assert [cores_of_worker(list(range(5)), i, 2) for i in range(2)] == [[0, 1, 2], [3, 4]]
    assert [cores_of_worker([0, 1, 2, 3], i, 3) for i in range(3)] == [[0, 1], [2], [3]]
    assert cores_of_worker([7], 1, 2) == [7], "more workers than cores: share the one there is"


def test_this_worker_runs_on_its_share_only() -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        pytest.skip("not under pytest-xdist (make test runs it with -n auto)")
    everything = [int(c) for c in os.environ["WORKBOOK_TEST_ALL_CORES"].split(",")]
    expected = cores_of_worker(everything, int(worker.removeprefix("gw")), int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    assert allowed_cores() == expected


@pytest.mark.all_cores
def test_an_all_cores_test_gets_every_core() -> None:
    if "WORKBOOK_TEST_ALL_CORES" not in os.environ:
        pytest.skip("not under pytest-xdist")
    assert allowed_cores() == [int(c) for c in os.environ["WORKBOOK_TEST_ALL_CORES"].split(",")]


def test_a_notebooks_tests_share_one_group(request: pytest.FixtureRequest) -> None:
    items = [i for i in request.session.items if i.path.name == "test_notebooks.py"]
    if not items:
        pytest.skip("tests/test_notebooks.py is not collected in this run")
    groups = {group_of(i) for i in items if "02_paged_attention.ipynb" in i.nodeid}
    assert groups == {"notebook-02_paged_attention.ipynb"}
