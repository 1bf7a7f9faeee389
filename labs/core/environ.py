"""Environment variables set (or unset) for a block, then put back as they were.

Why a helper: the workbook passes settings to code it does not call directly through the
environment (vLLM reads `VLLM_*` when an engine starts, the mini engine reads `$LABS_ENGINE` on
every step, a server inherits its starter's variables), and forgetting to restore one leaks a
lab's setting into the next engine of the same kernel or test process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


@contextmanager
def environ_set(values: Mapping[str, str | None]) -> Iterator[None]:
    """Each `os.environ[name] = value` for the block (None: unset), restored afterwards, also on errors.

    Args:
        values: variable -> its value inside the block; None removes it there.
    """
    before = {name: os.environ.get(name) for name in values}
    _apply(values)
    try:
        yield
    finally:
        _apply(before)


def _apply(values: Mapping[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
