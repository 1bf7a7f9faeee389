"""Model resolution order and its error messages (on real folders in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labs.core.models import resolve as r


def _model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    return path


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real caches or model folders leak in: HF cache, ~/models, the repo's models/ all in tmp."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(r, "WORKBOOK_MODELS_DIR", tmp_path / "workbook_models")
    monkeypatch.delenv("VLLM_MODEL", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_explicit_path_wins(isolated: Path) -> None:
    d = _model_dir(isolated / "somewhere" / "my-model")
    got = r.resolve_model(str(d))
    assert got.path == str(d) and got.source == "explicit path"


def test_hf_cache_snapshot_follows_refs_main(isolated: Path) -> None:
    repo = isolated / "hf" / "models--Qwen--Qwen2.5-0.5B-Instruct"
    _model_dir(repo / "snapshots" / "old")
    new = _model_dir(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    got = r.resolve_model("Qwen/Qwen2.5-0.5B-Instruct")
    assert got.path == str(new) and got.source == "HF cache"


def test_common_folder_by_basename(isolated: Path) -> None:
    d = _model_dir(isolated / "home" / "models" / "Llama-3.2-1B-Instruct")
    got = r.resolve_model("meta-llama/Llama-3.2-1B-Instruct")
    assert Path(got.path) == d.resolve() and got.source == "common folder"


def test_vllm_model_env_selects(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _model_dir(isolated / "workbook_models" / "tiny-random")
    monkeypatch.setenv("VLLM_MODEL", "tiny-random")
    got = r.resolve_model()
    assert got.path.endswith("tiny-random") and "VLLM_MODEL" in got.reason


def test_default_prefers_local_small_instruct_model(isolated: Path) -> None:
    _model_dir(isolated / "workbook_models" / "tiny-phrasebook")
    assert r.resolve_model().name == "tiny-phrasebook"
    _model_dir(isolated / "hf" / "models--Qwen--Qwen3-0.6B" / "snapshots" / "rev")
    got = r.resolve_model()
    assert got.name == "Qwen/Qwen3-0.6B" and got.source == "default"


def test_hub_id_last_with_network_warning(isolated: Path) -> None:
    with pytest.warns(UserWarning, match="network"):
        got = r.resolve_model("org/not-here")
    assert not got.is_local and got.source == "hub"


def test_missing_model_lists_every_place_looked(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(r.ModelNotFoundError) as err:
        r.resolve_model("org/not-here")
    message = str(err.value)
    assert str(isolated / "hf" / "models--org--not-here" / "snapshots") in message
    assert str(isolated / "home" / "models" / "not-here") in message
    with pytest.raises(r.ModelNotFoundError, match="make setup"):
        r.resolve_model()  # nothing selected, no default built


def test_models_cli_reports_missing_model_without_traceback(isolated: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "labs.core.models", "which", "no-such-model"],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(isolated)})
    assert proc.returncode == 2
    assert "was not found. Looked in:" in proc.stderr and "Traceback" not in proc.stderr
