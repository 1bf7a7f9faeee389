"""Lab 8: structured outputs, a grammar decides which tokens may come (notebooks/08_structured_outputs.ipynb).

`structured.py` runs the phrasebook prompt under a JSON schema, a regex and a choice list
(vLLM's structured outputs through xgrammar) in one batch with an unconstrained request, and
records the scheduler's token bitmask of every step (`labs.core.vllm_internals.structured_output`).
`predictions.py` checks the notebook's predictions (tokens allowed at the JSON schema's first
step; whether the answer is valid JSON within max_tokens) against the live run. Its exercises
(`exercise.py`, reference `solution.py`) pack, read and apply the bitmask, graded against
xgrammar's and vLLM's own code by tests/exercises/test_lab8_structured_outputs.py
(`make grade LAB=8`). See README.md.
"""
