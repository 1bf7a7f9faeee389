"""Lab 3: continuous batching on the live engine (notebooks/03_continuous_batching.ipynb).

`batching.py` steps the real scheduler on an engine with scarce KV memory (chunked prefill,
preemption and recompute) and compares static with continuous batching on the same trace;
`costs.py` explains why the step ratio and the throughput ratio differ on this machine.
`exercise.py` (your token-budget scheduler) is graded step by step against vLLM's real Scheduler;
`solution.py`, the reference, is also the mini engine's scheduler (labs.core.grading.engine_part).
See README.md.
"""
