"""Shared fixtures: one real vLLM engine and one real vLLM server on tiny-phrasebook for the whole session.

Why one: starting an engine costs ~15 s on a 2-core machine, a server ~40 s; every engine test
reads from the same live engine, and every test that only needs *a* server (test_bench,
test_capstone_translation, test_lab6_profiling) talks to the same `vllm_server`. Tests that must
start or stop engines themselves do it in a subprocess; tests of a start path itself (`start-bg`,
`start`, the process launcher, owned servers and their watchdog: test_serve.py, test_serve_owned.py)
start their own servers.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.serve_support import START_TIMEOUT_S
from tests.workers import on_own_cores

pytest_plugins = ("tests.workers",)  # `make test`'s parallel workers: core pinning and groups

if TYPE_CHECKING:
    from labs.core.serve import OwnedServer

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_MODEL = "tiny-phrasebook"
SERVER_API_KEY = "sk-test-shared-5b0e2d"  # the shared server requires it, as a learner's server with .env does
_shared_servers: list[OwnedServer] = []  # the running `vllm_server`, for the hook that stops it early
_last_server_user: list[str] = []  # node id of the last collected test that uses it
NOTEBOOK_CELLS_PROPERTY = "notebook_cells"  # user property: [(notebook, cell index, seconds, first line)]
NUM_SLOW_CELLS_SHOWN = 8

# Tests check exact outputs of the workbook's own model, whatever model the developer selected;
# notebook kernels and subprocesses inherit this.
os.environ["VLLM_MODEL"] = TEST_MODEL
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def model_path() -> Path:
    from labs.core.models import resolve_model

    return Path(resolve_model(TEST_MODEL).path)


@pytest.fixture(scope="session")
def llm() -> Iterator[Any]:
    from labs.core.engine import free_llm, make_llm

    with on_own_cores():  # whichever test asks first (a TP one lifts the binding), see tests/workers.py
        engine = make_llm(TEST_MODEL, inspectable=True, verbose=False)
    yield engine
    free_llm(engine)


@pytest.fixture(scope="session")
def hf_model(model_path: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tokenizer(llm: Any) -> Any:
    return llm.get_tokenizer()


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnedServer]:
    """The session's real vLLM server: tiny-phrasebook, default settings, its own port and log folder.

    Started by `serve.owned_server` (the way notebooks start theirs) on the first test that asks
    for it, stopped after the last one (see `pytest_runtest_teardown`) or at the session's end;
    its watchdog stops it even if pytest is killed. It requires an API key, read from an env file
    of its own (never the command line): clients send `vllm_server.api_key`.
    """
    from labs.core import serve

    work = tmp_path_factory.mktemp("vllm-server")
    env_file = work / ".env"
    env_file.write_text(f"VLLM_API_KEY={SERVER_API_KEY}\n")
    with on_own_cores():  # the server inherits the binding it starts with (it starts here)
        started = serve.owned_server("vllm-test-shared", log_dir=work / "logs", model=TEST_MODEL, env_file=env_file,
                                     timeout_s=START_TIMEOUT_S, echo=lambda _: None)
    with started as server:
        assert server.owned and not server.reused and server.api_key, "a fresh server of this session's own"
        _shared_servers.append(server)
        try:
            yield server
        finally:
            _shared_servers.remove(server)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Note the last test that uses `vllm_server` (after every other plugin's selection and ordering)."""
    users = [item.nodeid for item in items if "vllm_server" in getattr(item, "fixturenames", ())]
    _last_server_user[:] = users[-1:]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    """Stop the shared server once its last user is done: later tests (notebooks, test_serve*) start
    servers of their own and should not share the machine with an idle one."""
    try:
        return (yield)
    finally:
        # Under pytest-xdist a worker runs only some groups, in its own order: "last in the collection"
        # says nothing about this worker's last user, so the server stops with the session there.
        if _last_server_user and item.nodeid == _last_server_user[0] and "PYTEST_XDIST_WORKER" not in os.environ:
            for server in list(_shared_servers):
                server.stop(echo=lambda _: None)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The slowest notebook cells of the run (from every worker), so a run that took minutes longer
    than usual says which cell waited, even when every test passed."""
    cells = [cell for reports in terminalreporter.stats.values() for report in reports
             if getattr(report, "when", None) == "call" for name, value in getattr(report, "user_properties", ()) if name == NOTEBOOK_CELLS_PROPERTY
             for cell in value]
    if not cells:
        return
    terminalreporter.section("slowest notebook cells")
    for notebook, index, seconds, line in sorted(cells, key=lambda cell: -cell[2])[:NUM_SLOW_CELLS_SHOWN]:
        terminalreporter.write_line(f"{seconds:7.1f}s  {notebook} cell {index}: {line[:70]}")
