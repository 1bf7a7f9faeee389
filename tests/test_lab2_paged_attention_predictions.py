"""Lab 2's predictions and the blocks-against-slots view: live values against independent expectations,
and each check can say "wrong" and "no prediction made"."""

from __future__ import annotations

from typing import Any

import pytest

from labs.core import vllm_internals as vi
from labs.core.live import EngineObserver
from labs.core.predict import NO_PREDICTION, check_number
from labs.lab2_paged_attention import predictions
from labs.lab2_paged_attention.kv_usage import kv_usage
from labs.lab2_paged_attention.paged import token_prompt

pytestmark = pytest.mark.engine


@pytest.mark.parametrize("num_tokens", [100, 64, 1])
def test_prompt_blocks_is_ceil_of_tokens_over_block_size(llm: Any, num_tokens: int) -> None:
    block_size = vi.kv_cache_snapshot(llm).block_size
    result = predictions.prompt_blocks(llm, num_tokens, seed=4100 + num_tokens)
    assert result.block_size == block_size
    assert result.num_blocks == -(-num_tokens // block_size), result
    assert len(set(result.block_ids)) == result.num_blocks and 0 not in result.block_ids  # block 0: the null block
    wrong = check_number("blocks", result.num_blocks + 1, result.num_blocks, "why", quiet=True)
    assert wrong.right is False and "wrong by +1" in wrong.message


def test_prefix_hit_skips_only_the_full_blocks_of_the_shared_prefix(llm: Any) -> None:
    block_size = vi.kv_cache_snapshot(llm).block_size
    hit = predictions.prefix_hit(llm, shared_len=100, suffix_len=20, seed=4242)
    assert hit.first_cached == 0
    assert hit.second_cached == hit.second_output_cached == 100 // block_size * block_size
    assert hit.second_cached + hit.second_scheduled == hit.second_prompt_len == 120
    verdict = check_number("hit", 100, hit.second_cached, "why", quiet=True)  # the tempting answer
    assert verdict.right is (hit.second_cached == 100)
    if block_size == 32:
        assert verdict.right is False and "wrong by +4" in verdict.message
    none = check_number("hit", None, hit.second_cached, "why", quiet=True)
    assert none.right is None and NO_PREDICTION in none.message


def test_kv_usage_counts_blocks_and_slots_from_the_live_scheduler(llm: Any) -> None:
    from vllm import SamplingParams

    block_size = vi.kv_cache_snapshot(llm).block_size
    lens = [block_size + 1, 2 * block_size, 3]
    observer = EngineObserver(llm)
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    for i, n in enumerate(lens):
        observer.add_request(f"kvu-{i}", token_prompt(n, seed=5800 + i), params)
    observer.step()  # every prompt computed, nothing decoded yet
    usage = kv_usage(llm, 1)
    expected_blocks = sum(-(-n // block_size) for n in lens)
    assert (usage.blocks_in_use, usage.tokens_held) == (expected_blocks, sum(lens))
    assert usage.gauge == pytest.approx(usage.block_usage)  # vLLM's gauge counts exactly these blocks
    assert usage.fill == pytest.approx(sum(lens) / (expected_blocks * block_size))
    assert usage.slot_usage == pytest.approx(sum(lens) / (usage.num_blocks * block_size))
    assert usage.slot_usage < usage.gauge
    observer.step()  # one decode step: each request computes its first sampled token
    assert kv_usage(llm).tokens_held == sum(lens) + len(lens)
    observer.run()
    assert kv_usage(llm).blocks_in_use == 0


def test_kv_usage_shares_a_cached_prefix_block_once(llm: Any) -> None:
    from vllm import SamplingParams

    block_size = vi.kv_cache_snapshot(llm).block_size
    prefix = token_prompt(2 * block_size, seed=5900)
    params = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    observer = EngineObserver(llm)
    observer.add_request("share-0", prefix + token_prompt(5, seed=5901), params)
    observer.step()
    observer.add_request("share-1", prefix + token_prompt(5, seed=5902), params)
    observer.step()  # share-1 admitted with a hit on the two full prefix blocks
    usage = kv_usage(llm)
    # two shared full blocks, one own block each; share-0 has decoded one token more than its prompt
    assert usage.blocks_in_use == 4
    assert usage.tokens_held == 2 * block_size + (5 + 1) + 5
    assert usage.gauge == pytest.approx(usage.block_usage)
    observer.run()


def test_fill_after_prefill_is_one_block_and_one_token_over_two_blocks(llm: Any) -> None:
    run = predictions.fill_after_prefill(llm, num_requests=4, max_tokens=3)
    block_size = run.rows[0].block_size
    first = run.after_prefill
    assert first.step == 1 and first.blocks_in_use == 8 and first.tokens_held == 4 * (block_size + 1)
    assert first.fill == pytest.approx((block_size + 1) / (2 * block_size))
    assert [r.blocks_in_use for r in run.rows[:-1]] == [8] * (len(run.rows) - 1)  # decoding fills, adds no block
    assert [r.tokens_held for r in run.rows[:-1]] == [4 * (block_size + 1 + i) for i in range(len(run.rows) - 1)]
    assert run.rows[-1].blocks_in_use == 0  # all finished and freed
    wrong = check_number("fill", 100.0, 100 * first.fill, "why", tolerance=2, unit="%", quiet=True)
    assert wrong.right is False
