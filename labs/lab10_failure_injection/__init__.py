"""Lab 10: breaking the engine on purpose (notebooks/10_failure_injection.ipynb).

`kv_storm.py` overflows the KV cache of an in-process engine with a burst and shows the
preemption storm, the recompute tax and the knobs that end it (vLLM's real scheduler, run
standalone, under each knob). `server_faults.py` and `scenarios.py` hang a real server (its worker
paused through the workbook's vLLM plugin) and crash it (the worker killed with SIGKILL), and read
each failure as an operator does: /metrics, processes, /health, a client, py-spy, the log.
`python -m labs.lab10_failure_injection kv-storm | hang | crash` reproduces each in one command.
Exercises (`exercise.py`, reference `solution.py`): the recompute tax from scheduler outputs, the
smallest KV pool for a burst, and a server-state classifier, graded against vLLM's own scheduler
and states captured from a real server (tests/exercises/test_lab10_failure_injection.py). See README.md.
"""
