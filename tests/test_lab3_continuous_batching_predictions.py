"""Lab 3's predictions: the first preemption and the recompute tax, read from the scheduler's outputs.

The engine needs `SCARCE_KV`, so it runs in a fresh process (see tests/test_lab3_continuous_batching.py
for why); `record_live_run` writes its history to JSON and the tests check it here. The expected
values come from the trace and the engine's limits, and the tax is counted two independent ways.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from labs.core.live import StepObservation
from labs.core.predict import NO_PREDICTION, check_choice, check_number
from labs.lab3_continuous_batching.batching import SCARCE_KV, request_summary
from labs.lab3_continuous_batching.predictions import preemptions, recompute_tax
from labs.lab3_continuous_batching.traces import preemption_scenario

pytestmark = pytest.mark.engine

REPO_ROOT = Path(__file__).resolve().parents[1]


def record_live_run(out_path: str) -> None:
    """Engine side (a fresh process): the preemption scenario, first stepped by `first_preemption` up to
    the first preemption, then to the end; the history to `out_path` as JSON."""
    from labs.core.engine import free_llm, make_llm
    from labs.core.live import EngineObserver
    from labs.lab3_continuous_batching.predictions import first_preemption

    llm = make_llm("tiny-phrasebook", inspectable=True, verbose=False, **SCARCE_KV)
    observer = EngineObserver(llm)
    for req in preemption_scenario():
        observer.add_request(req.request_id, req.prompt_token_ids, req.sampling_params())
    first = first_preemption(observer)
    steps_to_first = len(observer.history)
    observer.run()
    again = first_preemption(observer)  # on a finished run: reads the history, steps nothing
    record = {
        "first": dataclasses.asdict(first) if first else None,
        "again": dataclasses.asdict(again) if again else None,
        "steps_to_first": steps_to_first,
        "kv_blocks": SCARCE_KV["num_gpu_blocks_override"] - 1,
        "history": [dataclasses.asdict(obs) for obs in observer.history],
        "output_lens": {rid: len(out.outputs[0].token_ids) for rid, out in observer.outputs.items()},
    }
    Path(out_path).write_text(json.dumps(record), encoding="utf-8")
    free_llm(llm)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("lab3-predictions") / "live.json"
    code = f"from {__name__} import record_live_run; record_live_run({str(out)!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text(encoding="utf-8"))
    record["history"] = [StepObservation(**obs) for obs in record["history"]]
    return record


def test_first_preemption_is_the_last_admitted_request_when_blocks_run_out(live: dict[str, Any]) -> None:
    history, first = live["history"], live["first"]
    assert first is not None and first == live["again"]
    assert live["steps_to_first"] == first["step"]  # first_preemption stepped exactly up to it
    step = first["step"]
    before = history[step - 2]  # the state the scheduler started the preemption step from
    # FCFS: the victim is the running request admitted last
    assert first["request_id"] == before.running_ids[-1]
    assert before.num_free_blocks == 0 and first["request_id"] in history[step - 1].preempted_ids
    assert not any(obs.preempted_ids for obs in history[:step - 1])
    rid = first["request_id"]
    assert first["num_computed_tokens"] == sum(o.num_scheduled_tokens.get(rid, 0) for o in history[:step - 1])
    wrong = check_choice("victim", "req-0", first["request_id"], "why", choices=("req-0", rid), quiet=True)
    assert wrong.right is False and "wrong" in wrong.message
    assert check_number("step", step + 3, step, "why", quiet=True).right is False
    none = check_choice("victim", None, first["request_id"], "why", quiet=True)
    assert none.right is None and NO_PREDICTION in none.message


def test_recompute_tax_counted_two_ways_agrees(live: dict[str, Any]) -> None:
    trace = preemption_scenario()
    tax = recompute_tax(live["history"], trace)
    assert live["output_lens"] == {req.request_id: req.max_tokens for req in trace}
    assert tax.preemptions and tax.tokens > 0
    # total scheduled - what each request needs == what each preempted request had computed
    assert tax.tokens == tax.lost_at_preemption
    assert tax.num_needed_tokens == sum(len(r.prompt_token_ids) + r.max_tokens - 1 for r in trace)
    assert tax.num_scheduled_tokens == sum(sum(o.num_scheduled_tokens.values()) for o in live["history"])
    # and against the recompute request_summary finds: each prefills what was lost + 1 sampled token (or the prompt)
    summary = request_summary(live["history"], trace)
    prompt_lens = {req.request_id: len(req.prompt_token_ids) for req in trace}
    seen: dict[str, int] = {}
    for p in preemptions(live["history"]):
        k = seen[p.request_id] = seen.get(p.request_id, -1) + 1
        segment = summary.loc[p.request_id, "recompute_chunks"].split(" | ")[k]
        assert sum(map(int, segment.split("+"))) == max(prompt_lens[p.request_id], p.num_computed_tokens + 1)
    assert 0 < tax.share < 1
    wrong = check_number("tax", 0, tax.tokens, "why", unit=" tokens", quiet=True)
    assert wrong.right is False and "(-100%)" in wrong.message
    assert check_number("tax", tax.tokens, tax.tokens, "why", quiet=True).right is True
    assert check_number("tax", None, tax.tokens, "why", quiet=True).right is None


def test_no_preemption_means_no_tax() -> None:
    trace = preemption_scenario(num_requests=1, max_tokens=2)
    rid = trace[0].request_id
    n = len(trace[0].prompt_token_ids)
    history = [StepObservation(1, {rid: n}, {}, [rid], [], [], [], {rid: [1, 2]}, 9, 0.0),
               StepObservation(2, {rid: 1}, {}, [], [], [], [rid], {}, 11, 0.0)]
    tax = recompute_tax(history, trace)
    assert (tax.tokens, tax.lost_at_preemption, tax.preemptions) == (0, 0, [])
