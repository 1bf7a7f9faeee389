"""One environment variable set (or unset) for a block, then put back as it was.

Why a helper: the workbook passes settings to code it does not call directly through the
environment (vLLM reads `VLLM_*` when an engine starts, the mini engine reads `$LABS_ENGINE` on
every step, a server inherits its starter's variables), and forgetting to restore one leaks a
lab's setting into the next engine of the same kernel or test process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def environ_set(name: str, value: str | None) -> Iterator[None]:
    """`os.environ[name] = value` for the block (None: unset), restored afterwards, also on errors.

    Args:
        name: the variable.
        value: its value inside the block; None removes it there.
    """
    before = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
