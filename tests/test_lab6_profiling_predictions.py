"""Lab 6's prediction checks: the decode share read from a real vLLM profiler trace and the TTFT/TPOT
comparison measured on the real server are right, and a wrong guess is called wrong.

Independent expectations: the decode share summed straight from the trace's events (vLLM names a
decode-only step `execute_context_0(0)_generation_...`), the medians from the harness's raw
per-request timings, and the burst's requests really in flight together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from labs.core.predict import NO_PREDICTION
from labs.lab6_profiling import predictions
from labs.lab6_profiling import profiling as prof
from tests.profiling_support import profiled_run  # 3 prompts, 4 output tokens each, ignore_eos


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(profiled_run(tmp_path_factory)["trace_path"])


@pytest.mark.engine
def test_decode_share_is_read_from_the_trace(trace_path: Path) -> None:
    events = [e for e in json.loads(trace_path.read_text())["traceEvents"]
              if e.get("ph") == "X" and str(e.get("name", "")).startswith("execute_context_")]
    decode = [e["dur"] for e in events if e["name"].startswith("execute_context_0(0)_")]
    assert len(events) - len(decode) == 1 and len(decode) == 3, [e["name"] for e in events]  # 1 prefill, 3 decodes
    expected = 100 * sum(decode) / sum(e["dur"] for e in events)
    steps = prof.annotated_steps(trace_path)
    assert predictions.decode_share(steps) * 100 == pytest.approx(expected, abs=0.01)
    right = predictions.check_decode_share(expected, steps, quiet=True)
    assert right.right is True and "3 decode-only steps" in right.message
    wrong = predictions.check_decode_share(expected - 50 if expected > 50 else expected + 50, steps, quiet=True)
    assert wrong.right is False and "wrong by" in wrong.message
    none = predictions.check_decode_share(None, steps, quiet=True)
    assert none.right is None and NO_PREDICTION in none.message


def test_an_empty_trace_is_refused() -> None:
    with pytest.raises(ValueError, match="no timed engine steps"):
        predictions.decode_share(pd.DataFrame(columns=["ms", "prefill_reqs"]))


@pytest.mark.server
def test_ttft_or_tpot_is_measured_on_the_server(vllm_server: Any) -> None:
    measured = predictions.burst_latency(vllm_server.url, api_key=vllm_server.api_key)
    alone, burst = measured.alone.df, measured.burst.df
    assert len(alone) == 3 and len(burst) == 8 and alone["success"].all() and burst["success"].all()
    ends = (alone["start_s"] + alone["e2el_ms"] / 1000).to_numpy()
    assert all(start >= end - 1e-3 for start, end in zip(alone["start_s"][1:], ends[:-1])), "one at a time"
    burst_ends = burst["start_s"] + burst["e2el_ms"] / 1000
    assert burst["start_s"].max() < burst_ends.min(), "all 8 in flight together"
    ratios = {"TTFT": burst["ttft_ms"].median() / alone["ttft_ms"].median(),
              "TPOT": burst["tpot_ms"].median() / alone["tpot_ms"].median()}
    assert measured.moved_more == max(ratios, key=ratios.get)
    assert measured.table().shape == (2, 2)
    other = "TPOT" if measured.moved_more == "TTFT" else "TTFT"
    assert predictions.check_moved_more(measured.moved_more, measured, quiet=True).right is True
    wrong = predictions.check_moved_more(other, measured, quiet=True)
    assert wrong.right is False and "wrong" in wrong.message
    none = predictions.check_moved_more(None, measured, quiet=True)
    assert none.right is None and NO_PREDICTION in none.message
    with pytest.raises(ValueError, match="not one of the choices"):
        predictions.check_moved_more("ITL", measured, quiet=True)
    print(measured.table(), ratios)
