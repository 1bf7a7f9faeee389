"""Lab 6: profiling, where the engine's time goes (notebooks/06_profiling.ipynb).

`profiling.py` holds four views of the same live engine: vLLM's own torch profiler (a Perfetto
trace and the top operators), the wall time of each stage of a request, `py-spy dump` of a running
server with each thread explained, and the decode roofline (bytes per step against measured memory
bandwidth). A measurement lab: no graded exercise yet; tests/test_lab6_profiling.py checks it on
the real engine. See README.md.
"""
