"""The workbook's shared core: what every lab stands on, and which never imports a lab.

errors and paths, hardware detection, the engine factory, the version-checked door to vLLM's
internals, the offline models, serving, benchmarking, the mini engine, grading, notebook
execution, widgets and debug-safety. `tests/test_layout.py` enforces the rule.
"""
