"""vLLM's greedy output equals Hugging Face transformers' `generate` on tiny-phrasebook, prompt by prompt."""

from __future__ import annotations

from typing import Any

import pytest

from labs.core.models.recipe import SHIPPED_PHRASEBOOK_BAR
from labs.core.models.train import greedy_translate
from labs.core.models.phrasebook import load_phrasebook, translation_messages

pytestmark = pytest.mark.engine


def test_vllm_greedy_equals_hf_generate_for_every_phrasebook_prompt(llm: Any, hf_model: Any, tokenizer: Any) -> None:
    from vllm import SamplingParams

    entries = load_phrasebook()
    outputs = llm.chat([translation_messages(e.ja) for e in entries],
                       SamplingParams(temperature=0.0, max_tokens=48), use_tqdm=False)
    vllm_texts = [o.outputs[0].text for o in outputs]
    hf_texts = greedy_translate(hf_model, tokenizer, [e.ja for e in entries], max_new_tokens=48)
    mismatches = [(e.entry_id, v, h) for e, v, h in zip(entries, vllm_texts, hf_texts) if v != h]
    assert not mismatches, f"{len(mismatches)} prompts differ (id, vLLM, HF): {mismatches[:5]}"

    exact = sum(v == e.zh for v, e in zip(vllm_texts, entries)) / len(entries)
    assert exact >= SHIPPED_PHRASEBOOK_BAR, f"vLLM reproduces only {exact:.1%} of the phrasebook"
