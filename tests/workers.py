"""`make test` on several pytest-xdist workers, each worker's engines computing on its own cores.

Why own cores: vLLM's CPU worker processes bind their OpenMP threads to cores
(`VLLM_CPU_OMP_THREADS_BIND`; `auto` takes the first core and reserves the rest), so two workers'
servers would both compute on core 0 while core 1 idles; and an engine computing in its own
process (the labs' inspectable engine) would use one OpenMP thread per core of the machine, so two
of them spin against each other (tests/bench_in_process_threads.py: 4-7x slower). Each worker
therefore exports `VLLM_CPU_OMP_THREADS_BIND` = its share of the cores and `OMP_NUM_THREADS` = its
size, and everything it starts inherits them (notebook kernels, servers, subprocesses; `make_llm`
sizes an in-process engine from the binding), while Python threads, API servers and engine-core
loops still run on any core.

Why not pin the whole worker to its cores (sched_setaffinity): a server's engine core busy-waits
on its worker during a step, and on one core that spin steals the worker's time (notebook 06's
second run: 146 s pinned against 39 s unpinned). Binding only the engines' compute keeps them
apart just as well (tests/bench_in_process_threads.py: 1.1x the time of one engine alone).

Why groups (`pytest_xdist_make_scheduler` below): a test module's module- and session-scoped fixtures (an engine, a
recorded run) are set up once per worker that runs any of its tests, so every module goes to one
worker whole; the notebook tests are one group per notebook (its first run, its rerun and its run
on another model share the working copy); the tests that drive debuggers share a group, and so do
modules that read one run made once per process (vLLM's TP=2 run, `run_tp_in_subprocess`, joins
the debuggers' group; Lab 6's profiled run, Lab 5's KV dtype runs): one engine per session instead of one per module.

Tests that need every core (tensor parallelism: one core per rank) carry the `all_cores` mark, on
the module (`pytestmark`) or on the test: the worker's binding is lifted for them, so the
workbook binds one core per rank as it does for a learner.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator

import pytest

from labs.core.environ import environ_set

BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
WORKER_BIND_ENV = "WORKBOOK_TEST_WORKER_BIND"  # this worker's binding, kept while a TP test lifts it
MAX_WORKERS = 4  # each worker may hold an engine and a server (~3 GiB): memory, not cores, bounds more
DEBUGGER_MODULES = ("tests/test_debugpy_session.py", "tests/test_ipdb.py", "tests/test_lab4_tensor_parallel_debug_ports.py",
                    "tests/test_lab4_tensor_parallel.py", "tests/test_lab2_paged_attention_browser.py")
TP_RUN_MODULES = ("tests/test_lab4_tensor_parallel.py", "tests/test_lab4_tensor_parallel_predictions.py",
                  "tests/exercises/test_lab4_tensor_parallel.py")  # each reads run_tp_in_subprocess(2)
# Modules that read one run made once per process (a fresh process's engine: ~12 s) share a group.
SHARED_RUN_GROUPS = {
    "lab6-profiled-run": ("tests/test_lab6_profiling.py", "tests/test_lab6_profiling_predictions.py"),  # profiled_run
    "lab5-kv-dtype-runs": ("tests/test_lab5_kv_quantization.py", "tests/test_lab5_kv_quantization_predictions.py"),
}
ALL_CORES_NOTEBOOKS = ("04_tensor_parallel.ipynb",)  # TP=2: a core per rank
HEAVY_MARKS = ("engine", "server", "notebook", "debugger", "browser")  # pyproject.toml's markers: seconds to minutes
HEAVY_FIXTURES = {"llm", "vllm_server", "hf_model"}  # conftest's shared engine, server, reference model
_NOTEBOOK_PARAM = re.compile(r"\[([^\]]*?\.ipynb)\]")


def allowed_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def cores_of_worker(cores: list[int], index: int, num_workers: int) -> list[int]:
    """Worker `index`'s contiguous share of `cores` (the first workers get one more when it does not divide).

    More workers than cores: worker i shares core i mod len(cores) with the others on it, so every
    engine still computes on one core and no core is left without a worker.
    """
    if num_workers > len(cores):
        return [cores[index % len(cores)]]
    per, extra = divmod(len(cores), num_workers)
    start = index * per + min(index, extra)
    return cores[start:start + per + (index < extra)]


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per core, at most MAX_WORKERS; one core means no parallelism to gain."""
    return min(MAX_WORKERS, len(allowed_cores()))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "all_cores: needs every core of the machine (tensor parallelism)")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None or BIND_ENV in os.environ:  # not parallel, or the developer chose a binding
        return
    mine = cores_of_worker(allowed_cores(), int(worker.removeprefix("gw")), int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ[BIND_ENV] = os.environ[WORKER_BIND_ENV] = ",".join(map(str, mine))
    # torch outside vLLM's workers (the Hugging Face reference model, the mini engine, training)
    # sizes its OpenMP pool from this when it loads; make_llm sizes an in-process engine's pool from
    # the binding above (vLLM's TP workers get theirs from vLLM).
    os.environ.setdefault("OMP_NUM_THREADS", str(len(mine)))
    if "torch" in sys.modules:  # loaded already: the variable came too late for this process
        sys.modules["torch"]._C.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _binding(value: str | None) -> contextlib.AbstractContextManager[None]:
    """`VLLM_CPU_OMP_THREADS_BIND` set to `value` (None: unset) for the block, then restored."""
    return environ_set({BIND_ENV: value})


def on_own_cores() -> contextlib.AbstractContextManager[None]:
    """The block runs with this worker's binding, even inside a TP test that lifted it.

    Why: a session fixture (the shared engine, the shared server) is built inside whichever test
    first asks for it, possibly a tensor-parallel one; it would then bind as if it had every core.
    """
    mine = os.environ.get(WORKER_BIND_ENV)
    return contextlib.nullcontext() if mine is None else _binding(mine)


def _on_every_core() -> contextlib.AbstractContextManager[None]:
    """This worker's binding lifted: TP ranks get one core each, as the workbook binds them."""
    if WORKER_BIND_ENV not in os.environ or os.environ.get(BIND_ENV) != os.environ[WORKER_BIND_ENV]:
        return contextlib.nullcontext()  # not ours to lift (no workers, or the developer's own binding)
    return _binding(None)


def group_of(nodeid: str) -> str:
    """The group a test runs in, from its node id: its notebook, the debuggers' and TP run's group, or its module."""
    path, _, name = nodeid.partition("::")
    file = path.rsplit("/", 1)[-1]
    if file == "test_notebooks.py":
        found = _NOTEBOOK_PARAM.search(name)
        if "lab1" in name:
            return "notebook-01_basic_inference.ipynb"  # reads the executed notebook 01
        return f"notebook-{found.group(1) if found else name}"
    path = path.removeprefix("./")
    if path in DEBUGGER_MODULES + TP_RUN_MODULES:
        return "debuggers"
    return next((group for group, modules in SHARED_RUN_GROUPS.items() if path in modules), path)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """xdist's scope scheduling with `group_of` as the scope: a group goes to one worker whole.

    Why our own and not `--dist loadgroup`: xdist 3.8 marks a group by rewriting `item._nodeid`,
    which pytest 9.2 no longer reads (node ids derive from `Node._id`), so its groups are silently
    ignored and a module's tests land on both workers.
    """
    if config.getvalue("dist") not in ("load", "loadscope", "loadgroup"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return GroupScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(nb in item.nodeid for nb in ALL_CORES_NOTEBOOKS):
            item.add_marker(pytest.mark.all_cores)
    # Longest groups first (a notebook's runs take minutes, a server's start half a minute): the
    # workers finish together on short unit-test modules instead of one running the last server
    # module alone. Stable, so tests keep their order inside a group.
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker collects, and all must agree on the order
        heavy_groups = {group_of(item.nodeid) for item in items if _is_heavy(item)}

        def rank(item: pytest.Item) -> int:
            group = group_of(item.nodeid)
            return 0 if group.startswith("notebook-") else 1 if group == "debuggers" else 2 if group in heavy_groups else 3

        items.sort(key=rank)


def _is_heavy(item: pytest.Item) -> bool:
    """The test starts an engine, a server, a kernel, a debugger or a browser (its marks), or uses the shared ones."""
    return (any(item.get_closest_marker(name) is not None for name in HEAVY_MARKS)
            or bool(HEAVY_FIXTURES & set(getattr(item, "fixturenames", ()))))


def _module_mark(request: pytest.FixtureRequest) -> bool:
    mark = getattr(request.module, "pytestmark", None)
    marks = mark if isinstance(mark, list) else [mark] if mark is not None else []
    return any(getattr(m, "name", "") == "all_cores" for m in marks)


@pytest.fixture(scope="module", autouse=True)
def _all_cores_for_marked_modules(request: pytest.FixtureRequest) -> Iterator[None]:
    """Before the module's own fixtures (autouse comes first in a scope): a module's TP engine gets every core."""
    if _module_mark(request):
        with _on_every_core():
            yield
    else:
        yield


@pytest.fixture(autouse=True)
def _all_cores_for_marked_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("all_cores") is not None and not _module_mark(request):
        with _on_every_core():
            yield
    else:
        yield


if __name__ == "__main__":
    cores = allowed_cores()
    n = min(MAX_WORKERS, len(cores))
    for i in range(n):
        print(f"gw{i}: {BIND_ENV}={','.join(map(str, cores_of_worker(cores, i, n)))}")
