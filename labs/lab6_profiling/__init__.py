"""Lab 6: profiling, where the engine's time goes (notebooks/06_profiling.ipynb).

`profiling.py` holds four views of the same live engine: vLLM's own torch profiler (a Perfetto
trace and the top operators), the wall time of each stage of a request, `py-spy dump` of a running
server with each thread explained, and the decode roofline (bytes per step against measured memory
bandwidth). `predictions.py` checks the notebook's predictions (the decode steps' share of the
trace, TTFT or TPOT under a burst of 8 requests) against the live run. Its exercises (`exercise.py`, reference `solution.py`) compute TTFT/TPOT/ITL from raw
timestamps, a percentile from a /metrics histogram and the decode roofline, graded against vLLM's
own code by tests/exercises/test_lab6_profiling.py (`make grade LAB=6`). See README.md.
"""
