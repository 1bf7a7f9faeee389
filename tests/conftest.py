"""Shared fixtures: one real vLLM engine on tiny-phrasebook for the whole session.

Why one: starting an engine costs ~15 s on a 2-core machine; every engine test reads from the
same live engine. Tests that must start or stop engines themselves do it in a subprocess.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_MODEL = "tiny-phrasebook"

# Tests check exact outputs of the workbook's own model, whatever model the developer selected;
# notebook kernels and subprocesses inherit this.
os.environ["VLLM_MODEL"] = TEST_MODEL
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def model_path() -> Path:
    from labs.core.models import resolve_model

    return Path(resolve_model(TEST_MODEL).path)


@pytest.fixture(scope="session")
def llm() -> Iterator[Any]:
    from labs.core.engine import free_llm, make_llm

    engine = make_llm(TEST_MODEL, inspectable=True, verbose=False)
    yield engine
    free_llm(engine)


@pytest.fixture(scope="session")
def hf_model(model_path: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tokenizer(llm: Any) -> Any:
    return llm.get_tokenizer()
