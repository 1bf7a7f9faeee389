"""Lab 1: basic inference with the real vLLM engine (notebooks/01_basic_inference.ipynb).

`inference.py` follows one request through the live engine, one `step()` at a time (tokenizer ->
scheduler -> KV blocks -> model runner -> sampler -> detokenizer), and shows `SamplingParams`, the
chat template and the tokenizer round trip; `exercise.py` (your stubs: prompt tokens, KV blocks,
KV bytes per token, a greedy decode loop) is graded against the live engine by
tests/exercises/test_lab1_basic_inference.py, `solution.py` is the reference. See README.md.
"""
