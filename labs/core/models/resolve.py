"""Find the model a lab should run on, and say why.

Order (first match wins):
1. an explicit path to a model folder (has `config.json`);
2. the Hugging Face cache (`models--org--name/snapshots/<rev>/`);
3. common folders: the workbook's `models/`, `./models`, `~/models`, `/models`;
4. a hub id, last, with a warning that loading it needs network.

What is asked for comes from the argument, else `VLLM_MODEL`. With nothing asked for, a small
instruct model found locally is used, else the workbook's own `tiny-phrasebook`.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from labs.core.errors import WorkbookError

from labs.core.paths import REPO_ROOT
WORKBOOK_MODELS_DIR = REPO_ROOT / "models"
DEFAULT_MODEL = "tiny-phrasebook"

# Small instruct models a learner is likely to have locally, smallest first: with nothing
# selected we prefer one of these over the toy model, because its outputs read like a real LLM's.
SMALL_INSTRUCT_MODELS = (
    "Qwen/Qwen2.5-0.5B-Instruct",
    "Qwen/Qwen3-0.6B",
    "Qwen/Qwen2.5-1.5B-Instruct",
    "meta-llama/Llama-3.2-1B-Instruct",
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelNotFoundError(WorkbookError, FileNotFoundError):
    """No model matched; the message lists every place that was searched."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model lives and why it was chosen.

    Attributes:
        name: what was asked for (or the default's name).
        path: a local folder, or a hub id when `is_local` is False.
        source: "explicit path", "HF cache", "common folder", "hub" or "default".
        reason: one sentence for the lab's banner.
        is_local: False only for a hub id that vLLM would have to download.
    """

    name: str
    path: str
    source: str
    reason: str
    is_local: bool = True


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def hf_cache_dirs() -> list[Path]:
    """The hub caches huggingface_hub would use, in its own precedence order."""
    dirs = []
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]).expanduser())
    hf_home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
    dirs.append(hf_home / "hub")
    return list(dict.fromkeys(dirs))


def common_model_dirs() -> list[Path]:
    dirs = [WORKBOOK_MODELS_DIR, Path.cwd() / "models", Path("~/models").expanduser(), Path("/models")]
    return list(dict.fromkeys(d.resolve() if d.exists() else d for d in dirs))


def _find_in_hf_cache(hub_id: str, looked: list[str]) -> Path | None:
    repo_dir_name = "models--" + hub_id.replace("/", "--")
    for cache in hf_cache_dirs():
        snapshots = cache / repo_dir_name / "snapshots"
        looked.append(str(snapshots))
        if not snapshots.is_dir():
            continue
        ref = cache / repo_dir_name / "refs" / "main"
        if ref.is_file() and _is_model_dir(snapshots / ref.read_text().strip()):
            return snapshots / ref.read_text().strip()
        candidates = sorted((p for p in snapshots.iterdir() if _is_model_dir(p)), key=lambda p: p.stat().st_mtime)
        if candidates:
            return candidates[-1]
    return None


def _find_in_common_dirs(name: str, looked: list[str]) -> Path | None:
    # "Qwen/Qwen2.5-0.5B-Instruct" may sit in ~/models as "Qwen/Qwen2.5-..." or just "Qwen2.5-...".
    names = list(dict.fromkeys([name, name.split("/")[-1]]))
    for folder in common_model_dirs():
        for candidate_name in names:
            candidate = folder / candidate_name
            looked.append(str(candidate))
            if _is_model_dir(candidate):
                return candidate
    return None


def _lookup(name: str, looked: list[str]) -> ResolvedModel | None:
    explicit = Path(name).expanduser()
    looked.append(f"{explicit} (as a path)")
    if _is_model_dir(explicit):
        return ResolvedModel(name, str(explicit.resolve()), "explicit path", f"{name!r} is a model folder.")
    if _HUB_ID.match(name):
        found = _find_in_hf_cache(name, looked)
        if found:
            return ResolvedModel(name, str(found), "HF cache", f"{name!r} found in the Hugging Face cache.")
    found = _find_in_common_dirs(name, looked)
    if found:
        return ResolvedModel(name, str(found), "common folder", f"{name!r} found in {found.parent}.")
    return None


def _not_found(name: str, looked: list[str], hint: str) -> ModelNotFoundError:
    places = "\n".join(f"  - {p}" for p in dict.fromkeys(looked))
    return ModelNotFoundError(f"Model {name!r} was not found. Looked in:\n{places}\n{hint}")


def resolve_model(name: str | None = None) -> ResolvedModel:
    """Resolve `name` (or `VLLM_MODEL`, or the default) to a model folder.

    Args:
        name: a path, a hub id ("org/name"), or a folder name such as "tiny-phrasebook".

    Returns:
        The resolved model, with the reason it was chosen.

    Raises:
        ModelNotFoundError: nothing matched; lists every place looked.
    """
    looked: list[str] = []
    asked = name or os.environ.get("VLLM_MODEL") or None
    if asked:
        via = "argument" if name else "VLLM_MODEL"
        found = _lookup(asked, looked)
        if found:
            return ResolvedModel(found.name, found.path, found.source, f"{found.reason} (selected by {via})")
        if _HUB_ID.match(asked) and os.environ.get("HF_HUB_OFFLINE") != "1":
            warnings.warn(
                f"{asked!r} is not on this machine; vLLM will try to download it from the hub, "
                "which needs network access (set HF_ENDPOINT for a mirror).",
                stacklevel=2,
            )
            return ResolvedModel(asked, asked, "hub", f"{asked!r} will be downloaded (selected by {via}).", False)
        hint = (
            "Build the workbook's offline models with `make setup` (or `python -m labs.core.models build`)."
            if asked in ("tiny-phrasebook", "tiny-random")
            else "Pass a model folder (with config.json), or download the model first."
        )
        raise _not_found(asked, looked, hint)

    for hub_id in SMALL_INSTRUCT_MODELS:
        found = _lookup(hub_id, looked)
        if found:
            reason = f"nothing selected; {found.reason[:-1]}, a small instruct model (set VLLM_MODEL to choose)."
            return ResolvedModel(found.name, found.path, "default", reason)
    default_dir = WORKBOOK_MODELS_DIR / DEFAULT_MODEL
    looked.append(str(default_dir))
    if _is_model_dir(default_dir):
        reason = "nothing selected and no small instruct model found locally: the workbook's offline default."
        return ResolvedModel(DEFAULT_MODEL, str(default_dir), "default", reason)
    raise _not_found(
        DEFAULT_MODEL, looked,
        "Build the workbook's offline models with `make setup` (or `python -m labs.core.models build`), "
        "or set VLLM_MODEL to a model folder.",
    )
