"""Lab 10's failure scenarios on one real server, and the diagnosis the lab prints for each.

`capture_states` walks one server through running -> overloaded -> hung -> crashed and keeps a
`ServerState` of each (what the tests and the exercises' grader use); `diagnose` turns a state
into the lines an operator would write in an incident channel; `recover` is the fix: stop what is
left and start the server again without the injection (`server_faults.restart_fault_server`:
`stop` on its folder, as `python -m labs.core.serve stop --log-dir DIR` does, then a new owned
server), and check it answers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from labs.core.paths import REPO_ROOT
from labs.core.debug.pyspy import ThreadDump, explain_thread
from labs.lab10_failure_injection.server_faults import (EXECUTE_MODEL_TIMEOUT_S, FaultServer, ServerState, alive,
                                                        in_background, kill_worker, log_tail, observe,
                                                        restart_fault_server, send_completion, status_line, wait_for)

RECORDED_STATES = Path(__file__).resolve().with_name("recorded_server_states.json")
# Client-side: how long a request may take before the operator's client gives up.
CLIENT_TIMEOUT_S = 5.0
LONG_REQUEST_TOKENS = 2000  # the server's max_model_len is 2048
SLOW_STEP_S = 0.02  # while the states are read, each step is held this long: >= 40 s per request


def start_long_request(server: FaultServer) -> tuple[list[Any], list[str]]:
    """Every step held SLOW_STEP_S and one long request (EOS ignored) in flight: it outlasts the
    readings however fast the machine, so each state builds on the last and a crash meets it mid-run.

    Returns:
        The request's thread(s) and the list its client-side result lands in.
    """
    server.pause_file.write_text(f"{SLOW_STEP_S}")
    in_flight, in_flight_results = in_background(server, 1, LONG_REQUEST_TOKENS, 120)
    time.sleep(1.0)
    return in_flight, in_flight_results


def hang(server: FaultServer, *, dump: bool = True) -> ServerState:
    """Arm the pause (an empty pause file: the worker holds the step it is sent) and read the hung server.

    Also sends a new request with the operator's client timeout, and notes what the client saw.
    """
    server.pause_file.write_text("")
    seen = send_completion(server, 8, CLIENT_TIMEOUT_S)
    hung = observe(server, "hung", 3.0, dump=dump)
    hung.notes.append(f"a new request, client side: {seen}")
    return hung


def crash(server: FaultServer, in_flight: list[Any], in_flight_results: list[str]) -> ServerState:
    """Kill the worker with SIGKILL mid-run and read what is left: processes, the client in flight,
    the log's last lines and `serve status`. The server is dead afterwards."""
    killed = kill_worker(server)  # mid-run: the in-flight request's step never returns
    wait_for(lambda: not alive(server.procs)["api_server"], 60)
    for t in in_flight:
        t.join(30)
    crashed = observe(server, "crashed", 1.0)
    crashed.notes.append(f"worker pid {killed} killed with SIGKILL; the request in flight, client side: "
                         f"{in_flight_results}")
    crashed.notes += [f"log: {line}" for line in log_tail(server, 12)]
    crashed.notes.append("serve status: " + status_line(server).replace("\n", " | "))
    return crashed


def capture_states(server: FaultServer, *, dump_hung: bool = True) -> list[ServerState]:
    """Put the server through the four states; returns one `ServerState` per state, in order.

    The server must have been started with the pause armed (`start_fault_server`); it is dead at
    the end (the worker was killed). `python -m labs.lab10_failure_injection hang|crash` run the
    same `hang` and `crash` steps on a server of their own.
    """
    in_flight, in_flight_results = start_long_request(server)
    states = [observe(server, "running", 2.0)]
    in_background(server, 6, LONG_REQUEST_TOKENS, 120)  # 7 requests for --max-num-seqs 2: a queue
    time.sleep(1.0)
    states.append(observe(server, "overloaded", 2.0))
    states.append(hang(server, dump=dump_hung))
    states.append(crash(server, in_flight, in_flight_results))
    server.pause_file.unlink(missing_ok=True)
    return states


def save_states(states: list[ServerState], path: Path = RECORDED_STATES) -> Path:
    """Write the states as JSON (the notebook and the exercises' grader read them back).

    Paths inside the recording's repository are written relative to it: the file is shipped, and a
    learner's checkout lives elsewhere than the recorder's.
    """
    text = json.dumps([s.to_json() for s in states], indent=1, ensure_ascii=False)
    path.write_text(text.replace(f"{REPO_ROOT}/", "") + "\n")
    return path


def load_states(path: Path = RECORDED_STATES) -> list[ServerState]:
    return [ServerState(**item) for item in json.loads(Path(path).read_text())]


def _moved(state: ServerState, name: str) -> str:
    if state.before is None or state.after is None:
        return "no answer"
    return f"{state.after[name] - state.before[name]:+g}"


# What a main thread waits on during a hang (vLLM 0.32.0 and this lab's names); Lab 6's roles otherwise.
HANG_ROLES = (
    ("wait_while_paused", "the injected pause: the worker holds the step it was sent and never answers"),
    ("acquire_read", "engine core: waits for its worker's answer to the step (MultiprocExecutor.execute_model, "
                     "timeout VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS)"),
)


def where_stuck(state: ServerState) -> list[str]:
    """The py-spy threads that say where the server waits: the worker's main thread, the engine core's."""
    lines = []
    for row in state.threads:
        thread = ThreadDump(row["pid"], row["process"], row["thread"], row["state"], row["frames"])
        if thread.thread == "MainThread" and ("Worker" in thread.process or "EngineCore" in thread.process):
            stack = "\n".join(thread.frames)
            role = next((r for needle, r in HANG_ROLES if needle in stack), explain_thread(thread))
            inner = " <- ".join(thread.frames[:3])
            lines.append(f"  {thread.process.split()[0]} pid {thread.pid}: {inner}\n    ({role})")
    return lines


def report(state: ServerState, classify: Any) -> list[str]:
    """What the lab prints for a state: the learner's (or the reference) classifier's label, then the diagnosis."""
    return diagnose(state, classify(state.before, state.after, state.processes))


def diagnose(state: ServerState, label: str) -> list[str]:
    """The lab's diagnosis of one state (label: what `classify_server_state` concluded)."""
    procs = ", ".join(f"{role} {'alive' if up else 'DEAD'}" for role, up in state.processes.items())
    lines = [f"[{state.label}] diagnosed: {label}",
             f"  processes: {procs}; /health: {state.health or 'no answer'}",
             f"  over {state.interval_s:g} s: generation tokens {_moved(state, 'vllm:generation_tokens_total')}, "
             f"prompt tokens {_moved(state, 'vllm:prompt_tokens_total')}, "
             f"preemptions {_moved(state, 'vllm:num_preemptions_total')}"]
    if state.after is not None:
        lines.append(f"  now: {state.after['vllm:num_requests_running']:g} running, "
                     f"{state.after['vllm:num_requests_waiting']:g} waiting")
    if label == "hung":
        lines += ["  every process is alive and /health says 200 (AsyncLLM.check_health only asks whether the "
                  "engine was marked dead), yet no token moves: a hang. Where it waits, from py-spy:", *where_stuck(state),
                  f"  vLLM's own timeout: the engine core gives up on a worker step after "
                  f"VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS (300 s by default, {EXECUTE_MODEL_TIMEOUT_S} s on this lab's "
                  "server) and then dies like a crash. Fix: remove the injection (unset WORKBOOK_FAULT_PAUSE_FILE) "
                  "and restart."]
    elif label == "crashed":
        lines.append("  the worker died -> the engine core's MultiprocWorkerMonitor shut the executor down -> the "
                     "API server got EngineDeadError, answered 500 to the request in flight and shut itself down "
                     "(VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=0). Fix: restart; the pid file is stale and status says so.")
    elif label == "overloaded":
        lines.append("  tokens flow but requests queue (max_num_seqs reached) or get preempted: add capacity or "
                     "admit less; nothing is broken.")
    return lines + [f"  {note}" for note in state.notes]


def recover(server: FaultServer, echo: Any = print) -> str:
    """The fix: stop what is left and start the server again without the pause armed; returns what a request gets."""
    server.pause_file.unlink(missing_ok=True)
    restart_fault_server(server, echo=echo)
    return send_completion(server, 8, 60)
