"""vLLM lines nobody can act on are left out of a notebook's or script's log, and only those."""

from __future__ import annotations

import pytest


def test_vllm_log_lines_nobody_can_act_on_are_left_out_unless_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record on the UNACTIONABLE list is dropped by vLLM's handler; others, and everything with DEBUG=1, pass."""
    import io
    import logging

    from labs.core.quiet_output import quiet_vllm_logs

    logger = logging.getLogger("vllm")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        monkeypatch.delenv("DEBUG", raising=False)
        assert quiet_vllm_logs()
        child = logging.getLogger("vllm.v1.engine.input_processor")
        child.warning("Passing raw prompts to InputProcessor is deprecated and will be removed")
        child.warning("KV cache is almost full")
        assert "Passing raw prompts" not in stream.getvalue() and "KV cache is almost full" in stream.getvalue()
        monkeypatch.setenv("DEBUG", "1")
        assert not quiet_vllm_logs()
        handler.filters.clear()
        child.warning("Passing raw prompts to InputProcessor is deprecated and will be removed")
        assert "Passing raw prompts" in stream.getvalue()
    finally:
        logger.removeHandler(handler)
