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


def test_the_filter_outlives_vllms_reconfiguration_at_an_engine_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM applies its logging dictConfig again at each engine start (`LLM.__init__`), replacing its
    handlers; the start-up lines logged next must still be filtered (notebooks printed them all)."""
    import io
    import sys

    from vllm.config.logging import LoggingConfig
    from vllm.logger import configure_logging, init_logger

    from labs.core.quiet_output import quiet_vllm_logs

    monkeypatch.delenv("DEBUG", raising=False)
    assert quiet_vllm_logs()
    stream = io.StringIO()
    try:
        monkeypatch.setattr(sys, "stdout", stream)  # the handler's stream, ext://sys.stdout, is read at configuration
        configure_logging(LoggingConfig(log_level="WARNING"))  # as LLM.__init__ does
        logger = init_logger("vllm.platforms.cpu")
        logger.warning("Triton is not installed. triton-cpu is expected on x86 CPUs.")
        logger.warning("Kernel %s is already registered. Overwriting.", "vllm.v1.sample.expand_kernel")
        logger.warning("KV cache is almost full")
    finally:
        monkeypatch.undo()
        configure_logging(LoggingConfig())  # vLLM's handler back on the real stdout
    assert "KV cache is almost full" in stream.getvalue()
    assert "Triton is not installed" not in stream.getvalue() and "already registered" not in stream.getvalue()
