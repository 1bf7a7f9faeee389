"""Lab 2: PagedAttention on the live engine (notebooks/02_paged_attention.ipynb).

`paged.py` reads the real block pool (block tables, ref counts, the prefix-cache hash chain),
measures prefix-cache hits, paged vs contiguous memory waste and block sizes. The exercises
rebuild vLLM's bookkeeping and kernel: `exercise_kv_cache.py` (block pool + KV cache manager,
graded against vLLM's real KVCacheManager) and `exercise_paged_attention.py` (attention through a
block table, graded against dense attention); their `solution_*.py` references are also the mini
engine's parts (labs/core/mini, through labs.core.grading.engine_part). See README.md.
"""
