"""Lab 10, parts 2 and 3 on a real vLLM server: a hang and a crash, seen from outside, and the fix.

ONE server (module-scoped; its own free port and log folder, never the default port or session)
goes through running -> overloaded -> hung (its worker paused by the workbook's vLLM plugin) ->
crashed (its worker killed with SIGKILL mid-request); every test reads those captured states.
Then the managed server's status must say DOWN, and a restart (the only second start) must serve.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labs.core.grading import load_implementation
from labs.lab10_failure_injection import scenarios
from labs.lab10_failure_injection import server_faults as sf


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    log_dir: Path = tmp_path_factory.mktemp("lab10") / "server"
    server = sf.start_fault_server(log_dir, echo=lambda _: None)
    try:
        states = scenarios.capture_states(server)
        yield {"server": server, "states": {s.label: s for s in states}}
    finally:
        sf.stop_server(server, echo=lambda _: None)


@pytest.fixture(scope="module")
def classify() -> Any:
    return load_implementation("lab10_failures").classify_server_state


@pytest.mark.server
def test_each_captured_state_is_classified_as_what_was_done(captured: dict[str, Any], classify: Any) -> None:
    for label, state in captured["states"].items():
        assert classify(state.before, state.after, state.processes) == label, (label, state.before, state.after)


@pytest.mark.server
def test_a_hung_server_looks_alive_but_nothing_moves(captured: dict[str, Any]) -> None:
    hung = captured["states"]["hung"]
    assert all(hung.processes.values()) and hung.health == 200, "a hang keeps every process alive and /health 200"
    assert hung.before["vllm:generation_tokens_total"] == hung.after["vllm:generation_tokens_total"]
    assert hung.after["vllm:num_requests_running"] >= 1
    assert any("client timeout" in note for note in hung.notes)
    text = "\n".join(scenarios.diagnose(hung, "hung"))
    assert "[hung] diagnosed: hung" in text and "/health: 200" in text
    assert "generation tokens +0" in text
    assert "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS" in text


@pytest.mark.server
def test_py_spy_shows_where_the_hung_server_waits(captured: dict[str, Any]) -> None:
    hung = captured["states"]["hung"]
    problem = next((note for note in hung.notes if note.startswith("py-spy:")), None)
    if problem and "ptrace" in problem:
        pytest.skip(f"py-spy cannot attach here: {problem}")
    assert problem is None, problem
    assert {row["process"].split()[0] for row in hung.threads} >= {"VLLM::EngineCore", "VLLM::Worker"}
    text = "\n".join(scenarios.where_stuck(hung))
    assert "wait_while_paused" in text and "the injected pause" in text, "py-spy shows where the worker waits"
    assert "MessageQueue.acquire_read" in text, "py-spy shows the engine core waiting for the worker"


@pytest.mark.server
def test_a_crashed_worker_is_reported_by_engine_core_api_server_and_client(captured: dict[str, Any]) -> None:
    crashed = captured["states"]["crashed"]
    assert not any(crashed.processes.values()), "vLLM's monitors end the engine core and the API server"
    assert crashed.before is None and crashed.health is None
    notes = "\n".join(crashed.notes)
    assert "HTTP 500" in notes and "EngineCore encountered an issue" in notes, "the client in flight gets a 500"
    assert "Worker proc VllmWorker-0 died unexpectedly" in notes, "the engine core's log names the dead worker"
    assert "EngineDeadError" in notes, "the API server's log"
    assert "DOWN" in notes and "stale pid file" in notes, "serve status tells the truth"


@pytest.mark.server
def test_overloaded_means_queued_while_tokens_flow(captured: dict[str, Any]) -> None:
    state = captured["states"]["overloaded"]
    assert max(state.before["vllm:num_requests_waiting"], state.after["vllm:num_requests_waiting"]) > 0
    assert state.after["vllm:generation_tokens_total"] > state.before["vllm:generation_tokens_total"]
    assert state.after["vllm:num_requests_running"] <= sf.MAX_NUM_SEQS


@pytest.mark.server
def test_restart_without_the_injection_serves_again(captured: dict[str, Any]) -> None:
    server = captured["server"]
    assert "DOWN" in sf.status_line(server)
    messages: list[str] = []
    assert scenarios.recover(server, echo=messages.append) == "HTTP 200"
    said = "\n".join(messages)
    assert "nothing to stop" in said or "stale" in said, f"the restart says what it found of the old server:\n{said}"
    assert f"stop: python -m labs.core.serve stop --log-dir {server.log_dir}" in said, \
        f"the stop hint names this server's folder, not the default server's make vllm-stop:\n{said}"
    assert "UP" in sf.status_line(server)
    assert all(sf.alive(server.procs).values())


@pytest.mark.server
@pytest.mark.parametrize("label", ["hung", "crashed"])
def test_the_hang_and_crash_commands_print_the_diagnosis(captured: dict[str, Any], classify: Any, label: str) -> None:
    """`python -m labs.lab10_failure_injection hang|crash` print `scenarios.report` of the state their
    `scenarios.hang` / `scenarios.crash` step reads: the same steps this module's server went through."""
    text = "\n".join(scenarios.report(captured["states"][label], classify))
    assert text.startswith(f"[{label}] diagnosed: {label}\n"), text
    if label == "hung":
        assert "Where it waits, from py-spy:" in text and "Fix: remove the injection" in text, text
        assert "a new request, client side: client timeout" in text, text
    else:
        assert "processes: api_server DEAD" in text and "Fix: restart; the pid file is stale" in text, text
        assert "killed with SIGKILL; the request in flight, client side: ['HTTP 500" in text, text
