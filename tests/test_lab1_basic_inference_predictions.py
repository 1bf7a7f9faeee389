"""Lab 1's predictions: the live values are right, and each check can say "wrong" and "no prediction made"."""

from __future__ import annotations

from typing import Any

import pytest

from labs.core.models.phrasebook import load_phrasebook, translation_messages
from labs.core.predict import NO_PREDICTION, check_number
from labs.lab1_basic_inference import predictions

pytestmark = pytest.mark.engine


def test_chat_template_cost_is_the_engine_prompt_minus_the_text(llm: Any) -> None:
    messages = translation_messages(load_phrasebook()[1].ja)
    cost = predictions.chat_template_cost(llm, messages)
    tokenizer = llm.get_tokenizer()
    # independent: the template's text, tokenized here, is what the engine was fed
    assert cost.num_prompt_tokens == len(tokenizer(cost.prompt_text, add_special_tokens=False)["input_ids"])
    assert cost.num_content_tokens == sum(len(tokenizer.encode(m["content"], add_special_tokens=False))
                                          for m in messages)
    assert cost.num_added_tokens > 0 and "<|im_start|>assistant" in cost.prompt_text
    assert check_number("template", cost.num_added_tokens + 3, cost.num_added_tokens, "why", quiet=True).right is False
    assert check_number("template", cost.num_added_tokens, cost.num_added_tokens, "why", quiet=True).right is True


def test_tokens_until_eos_counts_the_eos_token(llm: Any) -> None:
    from vllm import SamplingParams

    messages = translation_messages(load_phrasebook()[1].ja)
    run = predictions.tokens_until_eos(llm, messages, max_tokens=64)
    # tiny-phrasebook was trained to end each translation with EOS
    assert run.finish_reason == "stop" and run.ends_with_eos and 1 < run.num_output_tokens < 64
    # independent: the same request through llm.generate on the rendered template
    prompt = llm.get_tokenizer().apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    (out,) = llm.generate([prompt], SamplingParams(max_tokens=64, temperature=0.0), use_tqdm=False)
    assert len(out.outputs[0].token_ids) == run.num_output_tokens and out.outputs[0].text == run.text
    short = predictions.tokens_until_eos(llm, messages, max_tokens=2)
    assert (short.num_output_tokens, short.finish_reason, short.ends_with_eos) == (2, "length", False)
    verdict = check_number("EOS", None, run.num_output_tokens, "why", quiet=True)
    assert verdict.right is None and NO_PREDICTION in verdict.message


def test_kv_bytes_per_token_matches_the_model_shape(llm: Any) -> None:
    kv = predictions.kv_bytes_per_token(llm)
    hf_config = llm.llm_engine.model_config.hf_config
    head_dim = hf_config.hidden_size // hf_config.num_attention_heads
    expected = 2 * hf_config.num_hidden_layers * hf_config.num_key_value_heads * head_dim * kv.element_bytes
    assert kv.bytes_per_token == kv.spec_bytes_per_token == expected
    assert (kv.num_layers, kv.num_kv_heads, kv.head_size) == (hf_config.num_hidden_layers,
                                                              hf_config.num_key_value_heads, head_dim)
    wrong = check_number("KV bytes", expected // 2, kv.bytes_per_token, "why", unit=" bytes", quiet=True)
    assert wrong.right is False and "wrong by" in wrong.message
    assert check_number("KV bytes", None, kv.bytes_per_token, "why", quiet=True).right is None
