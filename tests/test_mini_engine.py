"""The mini engine (labs/core/mini) against the truth: transformers' logits and real vLLM's tokens.

The mini engine is assembled from the Lab 2/3 reference solutions, so these tests also check
that those answers, dropped into an engine, give what vLLM gives: every phrasebook prompt,
prefix-cache hits, preemption under scarce KV blocks, and chunked prefill.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from labs.core import vllm_internals as vi
from labs.core.mini.config import Config
from labs.core.mini.llm import LLM, SamplingParams
from labs.core.mini.request import Request
from labs.core.mini.runner import ModelRunner
from labs.core.mini.sampler import apply_top_p
from labs.core.models.phrasebook import load_phrasebook, translation_messages

TEST_MODEL = "tiny-phrasebook"
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def hf_tokenizer(model_path: Path) -> Any:
    return AutoTokenizer.from_pretrained(model_path)


@pytest.fixture(scope="module")
def mini_llm() -> LLM:
    return LLM(TEST_MODEL, num_kv_blocks=1024)  # 32k tokens: the whole phrasebook at once


@pytest.fixture(scope="module")
def phrasebook_messages() -> list[list[dict[str, str]]]:
    return [translation_messages(e.ja) for e in load_phrasebook()]


@pytest.fixture(scope="module")
def vllm_phrasebook(llm: Any, phrasebook_messages: list[list[dict[str, str]]]) -> list[Any]:
    from vllm import SamplingParams as VllmSamplingParams

    return llm.chat(phrasebook_messages, VllmSamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)


def conversation(first_entry: int, num_turns: int, last_entry: int) -> list[dict[str, str]]:
    """A chat of `num_turns` phrasebook translations, then one more question: a long shared prefix."""
    entries = load_phrasebook()
    messages = translation_messages(entries[first_entry].ja)[:1]
    for e in entries[first_entry:first_entry + num_turns]:
        messages += [{"role": "user", "content": e.ja}, {"role": "assistant", "content": e.zh}]
    return messages + [{"role": "user", "content": entries[last_entry].ja}]


# --- the model alone -------------------------------------------------------------------------


@pytest.mark.parametrize("entry_index", [0, 150, 319])
def test_model_logits_equal_transformers(model_path: Path, hf_model: Any, hf_tokenizer: Any, entry_index: int) -> None:
    """Logits after a first prefill chunk, a second chunk, and single-token decodes, vs one HF forward.

    Each reads the paged cache its own way: the first chunk only its own fresh K/V, the second
    also K/V that exist only in the cache (gathered through a shuffled block table), the decodes
    through Lab 2's paged_attention.
    """
    runner = ModelRunner(Config(model=str(model_path), dtype="float32", num_kv_blocks=8))
    prompt = hf_tokenizer.apply_chat_template(translation_messages(load_phrasebook()[entry_index].ja),
                                              add_generation_prompt=True, tokenize=False)
    token_ids = hf_tokenizer.encode(prompt, add_special_tokens=False)
    with torch.inference_mode():
        expected = hf_model(torch.tensor([token_ids])).logits[0]  # (num_tokens, vocab_size)
    block_ids = [3, 1, 6]  # deliberately out of order: the block table, not the order, must matter
    assert len(token_ids) <= len(block_ids) * runner.block_size
    n = len(token_ids)
    chunks = [(0, n // 2), (n // 2, n - 3), (n - 3, n - 2), (n - 2, n - 1), (n - 1, n)]
    for start, end in chunks:
        request = Request("r", token_ids[:end], num_computed_tokens=start)
        inputs = runner.prepare_inputs({"r": end - start}, {"r": request}, {"r": block_ids})
        (logits,) = runner.compute_logits(inputs)
        torch.testing.assert_close(logits, expected[end - 1], atol=2e-3, rtol=1e-3,
                                   msg=lambda m: f"tokens [{start}, {end}): {m}")


def test_top_p_masks_what_vllm_masks() -> None:
    logits = torch.randn(4, 4096, generator=torch.Generator().manual_seed(0)) * 3
    top_p = torch.tensor([1.0, 0.9, 0.5, 0.01])
    expected = vi.apply_top_k_top_p(logits, None, top_p)
    assert torch.equal(apply_top_p(logits, top_p).isinf(), expected.isinf())


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(mini_llm: LLM,
                                                                      phrasebook_messages: list[Any]) -> None:
    params = SamplingParams(temperature=1.5, top_p=0.95, max_tokens=24, seed=1234)
    (alone,) = mini_llm.chat(phrasebook_messages[7], params, use_tqdm=False)
    in_batch = mini_llm.chat(phrasebook_messages[5:9], [SamplingParams(temperature=1.5, max_tokens=24)] * 2 + [params]
                             + [SamplingParams(temperature=1.5, max_tokens=24)], use_tqdm=False)
    assert in_batch[2].outputs[0].token_ids == alone.outputs[0].token_ids
    # A prompt the model has never seen, so its next-token distributions are wide: on a memorised
    # phrasebook prompt tiny-phrasebook is so sure of itself that five seeds may agree.
    unseen = [{"role": "user", "content": "宇宙の果てには何がありますか。"}]
    other_seeds = {tuple(mini_llm.chat(unseen, SamplingParams(temperature=1.5, max_tokens=24, seed=s),
                                       use_tqdm=False)[0].outputs[0].token_ids) for s in range(5)}
    assert len(other_seeds) > 1, "five seeds, one output: the seed is not used"


def test_tiny_top_p_is_greedy(mini_llm: LLM, phrasebook_messages: list[Any]) -> None:
    greedy = mini_llm.chat(phrasebook_messages[:8], SamplingParams(temperature=0.0, max_tokens=16), use_tqdm=False)
    nucleus = mini_llm.chat(phrasebook_messages[:8], SamplingParams(temperature=1.0, top_p=1e-6, max_tokens=16),
                            use_tqdm=False)
    assert [o.outputs[0].token_ids for o in nucleus] == [o.outputs[0].token_ids for o in greedy]


# --- the engine against real vLLM ------------------------------------------------------------


@pytest.mark.engine
def test_greedy_equals_vllm_for_every_phrasebook_prompt(mini_llm: LLM, phrasebook_messages: list[Any],
                                                        vllm_phrasebook: list[Any]) -> None:
    outputs = mini_llm.chat(phrasebook_messages, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)
    assert [o.prompt_token_ids for o in outputs] == [list(v.prompt_token_ids) for v in vllm_phrasebook]
    mismatches = [(i, o.outputs[0].text, v.outputs[0].text) for i, (o, v) in enumerate(zip(outputs, vllm_phrasebook))
                  if o.outputs[0].token_ids != list(v.outputs[0].token_ids)]
    assert not mismatches, f"{len(mismatches)} prompts differ (index, mini, vLLM): {mismatches[:5]}"
    assert [o.outputs[0].text for o in outputs] == [v.outputs[0].text for v in vllm_phrasebook]
    assert [o.outputs[0].finish_reason for o in outputs] == [v.outputs[0].finish_reason for v in vllm_phrasebook]


@pytest.mark.engine
@pytest.mark.parametrize("same_batch", [False, True], ids=["one-after-the-other", "same-batch"])
def test_prefix_cache_hits_equal_vllm_and_tokens_equal_transformers(llm: Any, hf_model: Any, same_batch: bool) -> None:
    """A second conversation sharing a long history reuses its full blocks, as many as vLLM does.

    The tokens are checked against transformers without any cache sharing, in float32 on both
    sides: a multi-turn chat is not what tiny-phrasebook was trained on, so its output is
    unsure of itself, and bf16 rounding (vLLM's kernels vs ours) would flip near-ties.
    """
    from vllm import SamplingParams as VllmSamplingParams

    mini_llm = LLM(TEST_MODEL, dtype="float32", num_kv_blocks=64)
    first = 20 if same_batch else 40  # a history no other test sends
    chats = [conversation(first, 8, 200), conversation(first, 8, 201)]
    greedy = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    vllm_greedy = VllmSamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    if same_batch:  # the second finds blocks the first was given in the same step, not yet computed
        mini, vllm = mini_llm.chat(chats, greedy, use_tqdm=False), llm.chat(chats, vllm_greedy, use_tqdm=False)
    else:
        mini = [mini_llm.chat(c, greedy, use_tqdm=False)[0] for c in chats]
        vllm = [llm.chat(c, vllm_greedy, use_tqdm=False)[0] for c in chats]

    # The second chat finds every full block of the history the two share (the first one's hits
    # depend on what earlier tests left in vLLM's cache, so they are not compared).
    block_size = mini_llm.config.block_size
    num_shared = next(i for i, (a, b) in enumerate(zip(*(m.prompt_token_ids for m in mini))) if a != b)
    assert num_shared >= 4 * block_size, "the test's chats share too little to fill blocks"
    assert mini[1].num_cached_tokens == num_shared // block_size * block_size
    assert mini[1].num_cached_tokens == vllm[1].num_cached_tokens

    for out in mini:
        with torch.inference_mode():
            generated = hf_model.generate(torch.tensor([out.prompt_token_ids]), max_new_tokens=MAX_TOKENS,
                                          do_sample=False)[0, len(out.prompt_token_ids):]
        assert out.outputs[0].token_ids == generated.tolist()


@pytest.mark.engine
@pytest.mark.parametrize("engine_kwargs", [
    {"num_kv_blocks": 12, "max_num_seqs": 8, "max_num_batched_tokens": 64},  # 11 usable blocks for 8 requests
    {"max_num_seqs": 16, "max_num_batched_tokens": 16},  # every prompt prefilled in chunks of <= 16 tokens
], ids=["scarce-kv-blocks", "chunked-prefill"])
def test_squeezed_engine_gives_vllm_tokens(phrasebook_messages: list[Any], vllm_phrasebook: list[Any],
                                           engine_kwargs: dict[str, int]) -> None:
    squeezed = LLM(TEST_MODEL, **engine_kwargs)
    scheduled: list[dict[str, int]] = []
    schedule = squeezed.llm_engine.scheduler.schedule

    def recording_schedule() -> Any:  # records what the real scheduler decided, changes nothing
        output = schedule()
        scheduled.append(dict(output.num_scheduled_tokens))
        return output

    squeezed.llm_engine.scheduler.schedule = recording_schedule
    outputs = squeezed.chat(phrasebook_messages[:40], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS),
                            use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == [list(v.outputs[0].token_ids) for v in vllm_phrasebook[:40]]
    if "num_kv_blocks" in engine_kwargs:
        assert squeezed.llm_engine.num_preemptions > 0, "no preemption happened: the test lost its point"
    else:
        num_prefill_chunks = Counter(req_id for step in scheduled for req_id, n in step.items() if n > 1)
        assert max(num_prefill_chunks.values()) > 1, "no prompt was prefilled in chunks: the test lost its point"


@pytest.mark.engine
def test_benchmark_prints_the_ratio_table(llm: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from labs.core.mini import bench

    results = bench.main(["--num-prompts", "6", "--max-tokens", "8", "--long-output-len", "8", "--hf-batch-size", "4",
                          "--num-kv-blocks", "64"], vllm_llm=llm)
    out = capsys.readouterr().out
    assert {r.engine for r in results} == {"mini", "vLLM", "HF generate"}
    assert "mini/vLLM" in out and "mini/HF generate" in out and "goal >= 0.5x" in out and "goal >= 3.0x" in out
    assert all(r.num_output_tokens > 0 and r.elapsed_s > 0 for r in results)
