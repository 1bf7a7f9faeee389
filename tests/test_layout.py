"""The layout's rules, read from the code: one folder per lab, a shared core that never imports a lab.

Why a test: a layout is only as good as the next import someone adds. The imports are read from
the source (AST), module level and inside functions alike, so a lazy import cannot hide a
dependency; imports under `if TYPE_CHECKING:` are left out, since they never run. An import also
runs the `__init__` of each package above the module it names, so each of those is an edge too.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LABS = REPO / "labs"
LAB_DIR = re.compile(r"^lab(\d+)_(\w+)$")
LAB_DIRS = sorted(p for p in LABS.iterdir() if p.is_dir() and LAB_DIR.match(p.name))
CAPSTONE = "capstone_translation"


def module_name(path: Path, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_under(package: Path, root: Path = REPO) -> dict[str, Path]:
    """Every module of the package folder `package`, by dotted name relative to `root`."""
    return {module_name(p, root): p for p in package.rglob("*.py")}


MODULES: dict[str, Path] = modules_under(LABS)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers inside `if TYPE_CHECKING:` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The module a `from ... import` names, relative imports (`from . import x`) resolved."""
    if node.level == 0:
        return node.module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, modules: dict[str, Path] = MODULES, root: Path = REPO,
               top: str = "labs") -> list[tuple[int, str]]:
    """(line, module) for every workbook module `path` names in an import that runs.

    `from labs.x import y` counts as importing `labs.x.y` when that is a module, else `labs.x`.
    Relative imports are resolved against `path`'s package. The parent packages this also runs
    are added by `executed_by`, not here.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_lines(tree)
    importer, is_package = module_name(path, root), path.name == "__init__.py"
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == top]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, importer, is_package)
            if module.split(".")[0] != top:
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.append((node.lineno, sub if sub in modules else module))
    return found


def executed_by(importer: str, target: str, modules: dict[str, Path] | set[str]) -> list[str]:
    """The workbook modules that importing `target` from `importer` runs: `target` and its packages.

    Why: `from labs.core.serve import health` runs `labs/__init__`, `labs/core/__init__` and
    `labs/core/serve/__init__` before `health`, so a circle through a package's `__init__` is a
    circle. Packages that contain `importer` are left out: Python runs them before `importer`
    itself, so the import finds them already in `sys.modules`; naming such a package itself
    (`from labs.core.serve import ServerConfig` inside `labs.core.serve.config`) stays an edge,
    since it reads a half-run `__init__`.
    """
    parts = target.split(".")
    own = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 2)}
    parents = [".".join(parts[:i]) for i in range(1, len(parts))]
    return [p for p in parents if p in modules and p not in own] + [target]


def edges(modules: dict[str, Path] = MODULES, root: Path = REPO, top: str = "labs") -> list[tuple[str, int, str]]:
    """(importer, line, module run): one edge per imported module and per package it runs."""
    return [(mod, line, executed) for mod, path in modules.items()
            for line, target in imports_of(path, modules, root, top) for executed in executed_by(mod, target, modules)]


def owner(module: str) -> str:
    """'core', a lab folder's name, 'capstone_translation', or 'command' (labs/demo.py and the like)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    if parts[1] == "core":
        return "core"
    if LAB_DIR.match(parts[1]) or parts[1] == CAPSTONE:
        return parts[1]
    return "command"


def test_the_core_imports_no_lab() -> None:
    bad = [f"{MODULES[m].relative_to(REPO)}:{line} imports {t}" for m, line, t in edges()
           if owner(m) == "core" and owner(t) not in ("core", "package")]
    assert not bad, "the shared core must not import a lab or a command:\n" + "\n".join(bad)


def test_a_lab_does_not_import_another_labs_exercises_or_solutions() -> None:
    bad = [f"{MODULES[m].relative_to(REPO)}:{line} imports {t}" for m, line, t in edges()
           if owner(m) not in ("core", "command", "package") and owner(t) not in ("core", "package", owner(m))
           and t.rsplit(".", 1)[-1].startswith(("solution", "exercise"))]
    assert not bad, "take another lab's pieces through labs.core.grading:\n" + "\n".join(bad)


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the import circles (components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def import_graph(edge_list: list[tuple[str, int, str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for m, _, t in edge_list:
        if t != m:
            graph.setdefault(m, set()).add(t)
    return graph


def a_circle(component: list[str], edge_list: list[tuple[str, int, str]]) -> list[str]:
    """The shortest circle through the component's first module, as 'importer:line -> module' steps.

    Why: a component names every module on some circle; to cut one, a reader needs the imports, in order.
    """
    inside = set(component)
    step = {(m, t): line for m, line, t in edge_list if m in inside and t in inside and m != t}
    start = component[0]
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier and start not in came_from:
        nxt = []
        for v in frontier:
            for (m, t) in step:
                if m == v and t not in came_from:
                    came_from[t] = v
                    nxt.append(t)
        frontier = nxt
    path, v = [start], start
    while True:  # walk back from start to start
        v = came_from[v]
        path.append(v)
        if v == start:
            break
    path.reverse()
    return [f"{MODULES[m].relative_to(REPO) if m in MODULES else m}:{step[(m, t)]} -> {t}"
            for m, t in zip(path, path[1:])]


def test_no_import_circle() -> None:
    found = edges()
    circles = _strongly_connected(import_graph(found))
    assert not circles, "import circles:\n" + "\n".join(
        " <-> ".join(c) + "\n  e.g. " + "\n       ".join(a_circle(c, found)) for c in circles)


def test_the_circle_finder_finds_a_circle() -> None:
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _strongly_connected({"a": {"b"}, "b": set()}) == []


def test_a_circle_through_a_package_init_is_found(tmp_path: Path) -> None:
    """`from pkg.sub import leaf` runs `pkg/sub/__init__`; a circle through it is a circle.

    pkg/user.py imports only the leaf module, but pkg/sub/__init__ imports pkg.user back (by a
    relative import, resolved too). Without the package edge the graph has no circle.
    """
    files = {
        "pkg/__init__.py": "",
        "pkg/user.py": "from pkg.sub import leaf\n",
        "pkg/sub/__init__.py": "from .. import user\n",
        "pkg/sub/leaf.py": "import pkg.sub.other\n",  # its own package pkg.sub: no edge, no false circle
        "pkg/sub/other.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = modules_under(tmp_path / "pkg", tmp_path)
    found = edges(modules, tmp_path, "pkg")
    assert {(m, t) for m, _, t in found} == {("pkg.user", "pkg.sub"), ("pkg.user", "pkg.sub.leaf"),
                                             ("pkg.sub", "pkg.user"), ("pkg.sub.leaf", "pkg.sub.other")}
    assert _strongly_connected(import_graph(found)) == [["pkg.sub", "pkg.user"]]
    assert a_circle(["pkg.sub", "pkg.user"], found) == ["pkg.sub:1 -> pkg.user", "pkg.user:1 -> pkg.sub"]


def _launch_config_names() -> list[str]:
    text = (REPO / ".vscode" / "launch.json").read_text()
    text = re.sub(r'^\s*//.*$', "", text, flags=re.M)  # comments start their line in this file
    return [c["name"] for c in json.loads(text)["configurations"]]


@pytest.mark.parametrize("lab_dir", LAB_DIRS, ids=[p.name for p in LAB_DIRS])
def test_each_lab_has_its_parts_under_one_name(lab_dir: Path) -> None:
    number, topic = LAB_DIR.match(lab_dir.name).groups()
    assert (lab_dir / "README.md").is_file(), f"{lab_dir.name}: no README.md"
    exercises = {p.name.removeprefix("exercise") for p in lab_dir.glob("exercise*.py")}
    solutions = {p.name.removeprefix("solution") for p in lab_dir.glob("solution*.py")}
    assert exercises == solutions, f"{lab_dir.name}: each exercise file needs its solution file and back"
    assert (REPO / "notebooks" / f"{int(number):02d}_{topic}.ipynb").is_file()
    assert (REPO / "my_debug_scripts" / f"step{number}_{topic}.py").is_file()
    assert list((REPO / "tests").glob(f"test_lab{number}_{topic}*.py")), f"no tests/test_lab{number}_{topic}*.py"
    names = _launch_config_names()
    assert any(n.startswith(f"Lab {number}: ") for n in names), f"no launch configuration named 'Lab {number}: ...'"
    for test in (REPO / "tests" / "exercises").glob(f"test_lab{number}_*.py"):
        assert test.stem.startswith(f"test_lab{number}_"), test


def test_every_lab_with_exercises_is_graded() -> None:
    """Each exercise file is in the grading switch's table, so `make grade LAB=N` and the engine find it."""
    from labs.core.grading import EXERCISES, implementation_module_name

    listed = {implementation_module_name(name, "learner") for name in EXERCISES}
    on_disk = {module_name(p) for p in LABS.glob("*/exercise*.py")}
    assert listed == on_disk


def test_the_repository_root_is_computed_in_one_place() -> None:
    """Only labs/core/paths.py climbs from __file__ to the root: a moved module cannot point elsewhere."""
    bad = [f"{p.relative_to(REPO)}:{n}" for p in LABS.rglob("*.py") if p != LABS / "core" / "paths.py"
           for n, line in enumerate(p.read_text().splitlines(), 1) if "__file__" in line and "parents[" in line]
    assert not bad, "use labs.core.paths (REPO_ROOT, RUNS_DIR, ...):\n" + "\n".join(bad)


def test_make_progress_lists_every_lab() -> None:
    """`make progress` shows each lab folder's exercises under its title (labs/progress.py LAB_TITLES)."""
    from labs.progress import LAB_TITLES

    numbers = {int(LAB_DIR.match(p.name).group(1)) for p in LAB_DIRS}
    assert numbers <= set(LAB_TITLES), f"labs without a title in labs/progress.py: {sorted(numbers - set(LAB_TITLES))}"


def test_the_capstone_has_its_parts() -> None:
    """The capstone is a lab without a number: its folder, debug script, F5 entry and grader, all named after it."""
    from labs.progress import LAB_TITLES

    capstone = LABS / CAPSTONE
    assert all((capstone / name).is_file() for name in ("README.md", "exercise.py", "solution.py"))
    assert (REPO / "my_debug_scripts" / f"{CAPSTONE}.py").is_file() and "capstone" in LAB_TITLES
    assert any(name.startswith("Capstone: ") for name in _launch_config_names())
    assert list((REPO / "tests" / "exercises").glob("test_capstone_*.py"))
