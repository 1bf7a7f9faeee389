"""Lab 7: speculative decoding, n-gram drafts verified in one step (notebooks/07_speculative_decoding.ipynb).

`speculation.py` runs the live engine with `speculative_config={"method": "ngram", ...}` in three
modes on the same weights (plain, n-gram drafts, always-wrong drafts), records every step's drafts
and kept tokens from the scheduler, reads vLLM's spec-decode counters, and measures what a
verifying step costs. `predictions.py` checks the notebook's predictions (accepted drafts per step,
drafts proposed on text that does not repeat, whether wrong drafts make this CPU slower). Its
exercises (`exercise.py`, reference `solution.py`) are the n-gram proposal, greedy verification and
the acceptance figures, graded against vLLM's own code by
tests/exercises/test_lab7_speculative_decoding.py (`make grade LAB=7`). See README.md.
"""
