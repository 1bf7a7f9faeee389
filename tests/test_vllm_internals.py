"""The version-checked door to vLLM internals: the only importer of vLLM's internal modules.

The rule tests read the source (AST), module level and inside functions alike, so a lazy
`from vllm.v1... import` cannot hide, nor a module path in a string that another process runs
(`python -m vllm.entrypoints...`, `python -c "from vllm.benchmarks..."`); the live tests run on
the real engine.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from labs.core import vllm_internals as vi

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "labs" / "core" / "vllm_internals"
CHECKED_TREES = (REPO / "labs", REPO / "my_debug_scripts")
IMPORTERS = {"import_module", "__import__"}  # importlib.import_module("vllm.x"), __import__("vllm.x")
DOTTED_VLLM = re.compile(r"(?<![\w.])vllm((?:\.[A-Za-z_]\w*)+)")  # "vllm.a.b" in any text, not "x.vllm.a"


def vllm_submodules() -> frozenset[str]:
    """The installed vLLM's top-level submodule names (`v1`, `entrypoints`, `envs`, ...), read from
    its folder without importing it.

    Why the installed package decides: the import rule's line is "a `vllm.<submodule>` is
    internal, a name `from vllm import X` gives is public", and only vLLM's own folder tells a
    submodule (`vllm.sampling_params`) from a public name (`vllm.SamplingParams`, `vllm.__version__`)
    or from a string that only looks dotted (the entry-point group "vllm.general_plugins", the pid
    file "vllm.pid").
    """
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.submodule_search_locations, "vLLM is not installed"
    return frozenset(m.name for m in pkgutil.iter_modules(list(spec.submodule_search_locations)))


def internal_vllm_imports(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, module) for every import of a `vllm.<submodule>` in `source`.

    `import vllm` and `from vllm import X` are vLLM's public API and pass; `import vllm.envs`,
    `from vllm.v1.core import ...` and `importlib.import_module("vllm.config")` do not.
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("vllm.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("vllm."):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            target = node.args[0].value
            if name in IMPORTERS and isinstance(target, str) and target.startswith("vllm."):
                found.append((node.lineno, target))
    return found


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the module, class and function docstring nodes: prose for readers, not code that runs."""
    bodies = (n.body for n in ast.walk(tree)
              if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))
    return {id(body[0].value) for body in bodies
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)}


def internal_vllm_strings(source: str, submodules: frozenset[str], filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, path) for every dotted `vllm.<submodule>...` path in a string literal of `source`.

    Why strings too: a module path handed to another process (`[sys.executable, "-m",
    "vllm.entrypoints.openai.api_server"]`, a `python -c` code string) breaks on a vLLM upgrade
    exactly as an import does. Docstrings are exempt (they explain, nothing runs them), and so is
    every dotted name whose first part is not a vLLM submodule (see `vllm_submodules`).
    """
    tree = ast.parse(source, filename=filename)
    docstrings = _docstrings(tree)
    return [(node.lineno, "vllm" + match.group(1))
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            for match in DOTTED_VLLM.finditer(node.value)
            if match.group(1).split(".")[1] in submodules]


def _checked_files() -> list[Path]:
    return sorted(p for tree in CHECKED_TREES for p in tree.rglob("*.py") if PACKAGE not in p.parents)


def test_the_rule_catches_every_form_of_internal_import() -> None:
    source = """
import vllm
from vllm import LLM, SamplingParams
import vllm.envs
def free():
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
import importlib
importlib.import_module("vllm.sampling_params")
importlib.import_module("vllm")
"""
    assert internal_vllm_imports(source) == [(4, "vllm.envs"), (6, "vllm.distributed.parallel_state"),
                                             (8, "vllm.sampling_params")]


def test_only_this_package_imports_vllm_internals() -> None:
    """A vLLM upgrade must be a change to labs/core/vllm_internals/ only."""
    assert len(_checked_files()) > 20 and not any(PACKAGE in p.parents for p in _checked_files())
    offenders = [f"{path.relative_to(REPO)}:{line}: imports {module}"
                 for path in _checked_files()
                 for line, module in internal_vllm_imports(path.read_text(), str(path))]
    assert not offenders, ("vLLM internals reached outside labs/core/vllm_internals/ (add a function or "
                           "re-export there instead):\n" + "\n".join(offenders))


def test_the_string_rule_catches_module_paths_and_passes_public_names() -> None:
    source = '''"""Run `python -m vllm.entrypoints.openai.api_server` (a docstring: prose, exempt)."""
SERVER = "vllm.entrypoints.openai.api_server"
CODE = ("import sys; from vllm.benchmarks.serve import main; "
        "print(vllm.__version__)")
PUBLIC = ["vllm.LLM", "vllm.SamplingParams", "vllm.general_plugins", "vllm.pid", "myvllm.v1", "x.vllm.v1"]
def f():
    """vllm.v1.core in a function's docstring is prose too."""
    return f"{SERVER} -m vllm.envs"
'''
    assert internal_vllm_strings(source, vllm_submodules()) == [
        (2, "vllm.entrypoints.openai.api_server"), (3, "vllm.benchmarks.serve"), (8, "vllm.envs")]


def test_only_this_package_names_vllm_module_paths_in_strings() -> None:
    """A module path run by another process moves between vLLM releases like an import does."""
    submodules = vllm_submodules()
    assert {"v1", "entrypoints", "benchmarks", "envs"} <= submodules and "LLM" not in submodules
    offenders = [f"{path.relative_to(REPO)}:{line}: names {dotted}"
                 for path in _checked_files()
                 for line, dotted in internal_vllm_strings(path.read_text(), submodules, str(path))]
    assert not offenders, ("vLLM module paths named outside labs/core/vllm_internals/ (name them there "
                           "and import the name instead):\n" + "\n".join(offenders))


def test_the_package_imports_no_lab() -> None:
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(REPO)}:{node.lineno}: imports {name}" for name in names
                          if name.startswith(("labs.lab", "labs.capstone_translation"))]
    assert not offenders, "\n".join(offenders)


def test_importing_the_package_imports_no_vllm() -> None:
    """The debugger plugin, `make doctor` and engine-free tests import it; vLLM takes seconds."""
    code = "import sys, labs.core.vllm_internals as vi; vi.PINNED_VLLM_VERSION; print('vllm' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]


def test_request_output_kind_is_vllms_own_enum() -> None:
    from vllm.sampling_params import RequestOutputKind

    from labs.core.vllm_internals import RequestOutputKind as reexported

    assert reexported is RequestOutputKind is vi.RequestOutputKind
    with pytest.raises(AttributeError):
        vi.no_such_name  # noqa: B018


def test_scheduler_decision_reads_plain_values() -> None:
    output = SimpleNamespace(num_scheduled_tokens={"b-12345678": 1, "a-87654321": 40},
                             scheduled_new_reqs=[SimpleNamespace(req_id="a-87654321", num_computed_tokens=32),
                                                 SimpleNamespace(req_id="c-11111111", num_computed_tokens=0)],
                             preempted_req_ids={"z-1", "d-2"})
    decision = vi.scheduler_decision(output)
    assert list(decision.num_scheduled_tokens) == ["b-12345678", "a-87654321"]
    assert decision.num_cached_tokens == {"a-87654321": 32} and decision.preempted_req_ids == ["d-2", "z-1"]


def test_installed_vllm_is_the_pinned_version() -> None:
    assert vi.check_vllm_version().split("+")[0] == vi.PINNED_VLLM_VERSION


@pytest.mark.parametrize("other", ["0.31.0", "0.33.0", "1.0.0+cpu"])
def test_other_versions_fail_with_a_message_naming_the_pinned_one(other: str) -> None:
    with pytest.raises(vi.VllmVersionError) as err:
        vi.check_vllm_version(installed=other)
    assert other in str(err.value) and vi.PINNED_VLLM_VERSION in str(err.value)


@pytest.mark.engine
def test_live_kv_cache_snapshot(llm: Any) -> None:
    snap = vi.kv_cache_snapshot(llm)
    assert snap.num_blocks > 0 and 0 <= snap.num_free_blocks <= snap.num_blocks
    assert snap.block_size == llm.llm_engine.vllm_config.cache_config.block_size
    assert len(vi.kv_cache_tensors(llm)) == llm.llm_engine.model_config.hf_config.num_hidden_layers


@pytest.mark.engine
def test_live_queues_and_block_tables(llm: Any) -> None:
    from vllm import SamplingParams

    engine = llm.llm_engine
    engine.add_request("queued-a", {"prompt_token_ids": list(range(10, 80))}, SamplingParams(max_tokens=4))
    queues = vi.queue_snapshot(llm)
    assert [r.request_id.startswith("queued-a") for r in queues["waiting"]] == [True]
    engine.step()
    (running,) = vi.queue_snapshot(llm)["running"]
    assert running.num_computed_tokens == 70
    assert vi.request_block_ids(llm, "queued-a") == running.block_ids
    assert len(running.block_ids) == -(-70 // vi.kv_cache_snapshot(llm).block_size)
    while engine.has_unfinished_requests():
        engine.step()
    with pytest.raises(KeyError, match="queued-a"):
        vi.request_block_ids(llm, "queued-a")


NUMBA_THEN_ENGINE = """
import numba, llvmlite.binding  # noqa: F401  (what vLLM's n-gram drafter and Lab 7's graders import)
from labs.core.engine import free_llm, make_llm
llm = make_llm("tiny-phrasebook", inspectable=True, verbose=False)
print("STARTED", len(llm.generate(["hi"], use_tqdm=False)[0].outputs[0].token_ids) > 0)
free_llm(llm)
"""


@pytest.mark.engine
def test_an_engine_starts_in_a_process_that_imported_numba() -> None:
    """vLLM 0.32.0's kernel-override scan crashes on llvmlite's module; the workbook's plugin guards it.

    Without the guard (VLLM_PLUGINS leaving it out) the same script must fail as vLLM does, so
    this test can tell the guard is what makes the difference."""
    import os

    run = lambda env: subprocess.run([sys.executable, "-c", NUMBA_THEN_ENGINE], cwd=REPO, capture_output=True,  # noqa: E731
                                     text=True, timeout=300, env={**os.environ, **env})
    guarded = run({})
    assert "STARTED True" in guarded.stdout, guarded.stdout[-2000:] + guarded.stderr[-3000:]
    unguarded = run({"VLLM_PLUGINS": "workbook_debug_workers,workbook_breakpoints"})  # all but the guard
    assert unguarded.returncode != 0 and "'_lib_fn_wrapper' object has no attribute 'get'" in unguarded.stderr, (
        "vLLM no longer trips on llvmlite: drop guard_kernel_override_scan and its plugin entry\n"
        + unguarded.stderr[-2000:])
