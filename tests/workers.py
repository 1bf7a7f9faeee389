"""`make test` on several pytest-xdist workers, each pinned to its own share of the CPU cores.

Why pinned: vLLM's CPU worker binds its OpenMP threads to the cores this process may use
(`VLLM_CPU_OMP_THREADS_BIND=auto` reads the affinity mask), so two unpinned workers would put both
engines' compute on the same core while the other idles. A worker's mask is inherited by
everything it starts (notebook kernels, servers, subprocesses). Measured with farm-bench on a
2-core machine: two lab notebooks pinned to one core each, side by side, took 0.29x the wall time of
the same two run one after the other unpinned (`python tests/workers.py` prints the plan).

Why groups (`--dist loadgroup`): a test module's module- and session-scoped fixtures (an engine, a
recorded run) are set up once per worker that runs any of its tests, so every module goes to one
worker whole; the notebook tests are one group per notebook (its first run, its rerun and its run
on another model share the working copy); the tests that drive debuggers share a group, since
their ranks listen on the workbook's debugger ports.

Tests that need every core (tensor parallelism: one core per rank) carry the `all_cores` mark, on
the module (`pytestmark`) or on the test; their worker widens its mask for them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

MAX_WORKERS = 4  # each worker may hold an engine and a server (~3 GiB): memory, not cores, bounds more
DEBUGGER_MODULES = ("test_debugpy_session.py", "test_ipdb.py", "test_lab4_tp_debug_ports.py",
                    "test_lab4_tensor_parallel.py", "test_browser_lab2.py")
ALL_CORES_NOTEBOOKS = ("04_tensor_parallel.ipynb",)  # TP=2: a core per rank
_NOTEBOOK_PARAM = re.compile(r"\[([^\]]*?\.ipynb)\]")


def allowed_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def cores_of_worker(cores: list[int], index: int, num_workers: int) -> list[int]:
    """Worker `index`'s contiguous share of `cores` (the first workers get one more when it does not divide)."""
    per, extra = divmod(len(cores), num_workers)
    start = index * per + min(index, extra)
    return cores[start:start + per + (index < extra)] or cores


def own_cores() -> list[int] | None:
    """This worker's share of the cores, or None outside pytest-xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    cores = os.environ.get("WORKBOOK_TEST_ALL_CORES")
    if worker is None or not cores:
        return None
    return cores_of_worker([int(c) for c in cores.split(",")], int(worker.removeprefix("gw")),
                           int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))


@contextmanager
def on_own_cores() -> Iterator[None]:
    """Run the block on this worker's own cores, whatever test widened the mask meanwhile.

    Why: a session fixture (the shared engine, the shared server) is built inside whichever test
    first asks for it, possibly a tensor-parallel one running on every core; the engine would then
    record (and bind to) cores that are not this worker's.
    """
    mine = own_cores()
    if mine is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, mine)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per core, at most MAX_WORKERS; one core means no parallelism to gain."""
    return min(MAX_WORKERS, len(allowed_cores()))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "all_cores: needs every core of the machine (tensor parallelism)")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None or not hasattr(os, "sched_setaffinity"):
        return
    all_cores = allowed_cores()
    mine = cores_of_worker(all_cores, int(worker.removeprefix("gw")), int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["WORKBOOK_TEST_ALL_CORES"] = ",".join(map(str, all_cores))
    os.sched_setaffinity(0, mine)


def group_of(item: pytest.Item) -> str:
    """The xdist group of a test: its notebook, the debuggers' group, or its module."""
    path = item.path.name
    if path == "test_notebooks.py":
        found = _NOTEBOOK_PARAM.search(item.nodeid)
        name = found.group(1) if found else item.name
        if "lab1" in item.name:
            name = "01_basic_inference.ipynb"  # reads the executed notebook 01
        return f"notebook-{name}"
    if path in DEBUGGER_MODULES:
        return "debuggers"
    return str(item.path.relative_to(item.config.rootpath))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the marks into node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group_of(item)))
        if any(nb in item.nodeid for nb in ALL_CORES_NOTEBOOKS):
            item.add_marker(pytest.mark.all_cores)
    # Longest groups first (a notebook's runs take minutes): the workers finish together instead of
    # one running the last notebook alone. Stable, so tests keep their order inside a group.
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker collects, and all must agree on the order
        items.sort(key=lambda item: 0 if group_of(item).startswith("notebook-") else 1 if group_of(item) == "debuggers" else 2)


def _widened() -> Iterator[None]:
    cores = os.environ.get("WORKBOOK_TEST_ALL_CORES")
    if not cores or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@pytest.fixture(scope="module", autouse=True)
def _all_cores_for_marked_modules(request: pytest.FixtureRequest) -> Iterator[None]:
    """Before the module's own fixtures (autouse comes first in a scope): a module's TP engine gets every core."""
    if _module_mark(request):
        yield from _widened()
    else:
        yield


def _module_mark(request: pytest.FixtureRequest) -> bool:
    mark = getattr(request.module, "pytestmark", None)
    marks = mark if isinstance(mark, list) else [mark] if mark is not None else []
    return any(getattr(m, "name", "") == "all_cores" for m in marks)


@pytest.fixture(autouse=True)
def _all_cores_for_marked_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("all_cores") is not None and not _module_mark(request):
        yield from _widened()
    else:
        yield


if __name__ == "__main__":
    cores = allowed_cores()
    n = min(MAX_WORKERS, len(cores))
    for i in range(n):
        print(f"gw{i}: cores {cores_of_worker(cores, i, n)}")
