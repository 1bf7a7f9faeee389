"""Lab 9: multi-LoRA serving, several adapters on one base model in one engine (notebooks/09_multi_lora.ipynb).

`multi_lora.py` starts an in-process engine with `enable_lora=True`, asks the same phrasebook
question with no adapter, the `english` adapter and the `glossary` adapter in one batch, records
which request ran with which adapter slot in every step (`labs.core.vllm_internals.lora`), measures
what mixing adapters in one batch costs against one adapter at a time, and builds the server flags
(`--enable-lora --lora-modules ...`) that serve the same over HTTP. The adapters themselves are
tiny-phrasebook's, trained by hand in torch and shipped (labs/core/models/adapters.py,
lora_train.py). `predictions.py` checks the notebook's predictions against the live engine. Its
exercises (`exercise.py`, reference `solution.py`) compute a mixed-adapter LoRA layer, an adapter's
scaling from adapter_config.json and the memory of one adapter slot, graded against vLLM's own code
by tests/exercises/test_lab9_multi_lora.py (`make grade LAB=9`). See README.md.
"""
