"""One command per failure: `python -m labs.lab10_failure_injection kv-storm | hang | crash | record-states`.

    kv-storm        an in-process engine with 12 KV blocks gets a burst of 8: the preemption storm,
                    the recompute tax, and the knobs side by side (~30 s)
    hang            a real server whose worker is paused (the workbook's vLLM plugin): the client's
                    timeout, /metrics that stop moving, /health still 200, py-spy of every process,
                    then the fix (restart without the injection) (~2 min on 2 cores)
    crash           a real server whose worker is killed with SIGKILL mid-request: the client's
                    HTTP 500, the log lines, `serve status`, then a restart (~2 min)
    record-states   one server through running / overloaded / hung / crashed; writes
                    labs/lab10_failure_injection/recorded_server_states.json (the notebook and the
                    exercises' grader read it)

Every server runs on a free port with its own log folder under runs/lab10/ and is stopped at the end.
"""

from __future__ import annotations

import argparse

from labs.core.grading import load_implementation


def kv_storm() -> int:
    from labs.core.engine import free_llm
    from labs.lab10_failure_injection import kv_storm as ks

    llm = ks.make_storm_engine()
    try:
        run = ks.run_storm(llm)
        table = ks.storm_table(run)
        print(table[(table["preempted"] != "") | (table.index <= 3)].to_string())
        print("\n".join(ks.explain_storm(run)))
        print(ks.compare_knobs(run.trace).to_string())
    finally:
        free_llm(llm)
    return 0


def server_fault(kind: str) -> int:
    """A server of its own through one failure (the same `scenarios.hang` / `scenarios.crash` steps the
    tests capture), the lab's diagnosis of it, then the fix."""
    from labs.lab10_failure_injection import scenarios, server_faults as sf

    classify = load_implementation("lab10_failures").classify_server_state
    server = sf.start_fault_server(sf.FAULTS_DIR / kind)
    try:
        print("healthy first:", sf.send_completion(server, 8, 60))
        in_flight, results = scenarios.start_long_request(server)  # slow steps: the request is still running below
        if kind == "hang":
            print(f"injecting: {server.pause_file} made empty, so the worker holds the step it is sent")
            state = scenarios.hang(server)
        else:
            print("killing the worker with SIGKILL while a request is generating")
            state = scenarios.crash(server, in_flight, results)
        print("\n".join(scenarios.report(state, classify)))
        print("fix: stop what is left and start again without the injection ...")
        print("after the restart, a request:", scenarios.recover(server))
    finally:
        sf.stop_server(server)
    return 0


def record_states() -> int:
    from labs.lab10_failure_injection import scenarios, server_faults as sf

    server = sf.start_fault_server(sf.FAULTS_DIR / "record")
    try:
        states = scenarios.capture_states(server)
    finally:
        sf.stop_server(server)
    classify = load_implementation("lab10_failures").classify_server_state
    for state in states:
        print("\n".join(scenarios.report(state, classify)))
    print("written:", scenarios.save_states(states))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.lab10_failure_injection", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("failure", choices=("kv-storm", "hang", "crash", "record-states"))
    args = parser.parse_args(argv)
    if args.failure == "kv-storm":
        return kv_storm()
    if args.failure == "record-states":
        return record_states()
    return server_fault(args.failure)


if __name__ == "__main__":
    raise SystemExit(main())
