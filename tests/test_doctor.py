"""The install checks, including the torchvision trap, on real (temporary) package metadata."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from labs import doctor


def _fake_dist(site: Path, name: str, version: str) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_doctor_passes_on_this_install() -> None:
    proc = subprocess.run([sys.executable, "-m", "labs.doctor"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ok  transformers imports Qwen2" in proc.stdout
    assert "the workbook's vLLM plugins" in proc.stdout


def test_cuda_torchvision_next_to_cpu_torch_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if "+cpu" not in doctor._version("torch"):
        pytest.skip("only a CPU build of torch has this trap")
    _fake_dist(tmp_path, "torchvision", "0.28.0")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(doctor.InstallError, match="pip uninstall -y torchvision"):
        doctor.check_torch_companions()


def test_plugin_list_matches_pyproject_and_a_left_out_plugin_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert set(pyproject["project"]["entry-points"][doctor.PLUGIN_GROUP]) == set(doctor.WORKBOOK_PLUGINS)
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    assert doctor.check_plugins().startswith("ok  ")
    monkeypatch.setenv("VLLM_PLUGINS", "workbook_debug_workers")
    line = doctor.check_plugins()
    assert line.startswith("note  ") and "workbook_breakpoints" in line
