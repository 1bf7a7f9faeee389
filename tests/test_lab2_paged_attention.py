"""Lab 2's live views on the real engine: prefix-cache hits, memory waste, the block pool picture."""

from __future__ import annotations

from typing import Any

import pytest

from labs.lab2_paged_attention import paged
from labs.core import vllm_internals as vi
from labs.core.live import EngineObserver

pytestmark = pytest.mark.engine


def test_prefix_cache_hits_are_read_from_the_engine(llm: Any) -> None:
    block_size = vi.kv_cache_snapshot(llm).block_size
    prefix_len = 8 * block_size
    runs = paged.prefix_cache_runs(llm, prefix_len=prefix_len, suffix_len=5, num_requests=3, seed=12345)
    assert runs[0].num_cached_tokens == 0
    assert [r.num_cached_tokens for r in runs[1:]] == [prefix_len, prefix_len]
    # the warm requests reuse the very blocks the first one filled
    assert runs[1].block_ids[:8] == runs[0].block_ids[:8] == runs[2].block_ids[:8]


def test_paged_allocation_wastes_little_contiguous_wastes_most(llm: Any) -> None:
    result = paged.measure_waste(llm, paged.varied_lengths(num_requests=24, low=64, high=1400))
    assert len(result.seq_lens) == 24
    assert all(n <= b * result.block_size for n, b in zip(result.seq_lens, result.num_allocated_blocks))
    assert result.paged_utilization >= 0.96, result.paged_utilization
    assert result.contiguous_utilization <= 0.40, result.contiguous_utilization
    fit_paged, fit_contiguous = result.max_concurrent_sequences(100_000)
    assert fit_paged > 2 * fit_contiguous


def test_block_pool_picture_shows_running_requests(llm: Any) -> None:
    from vllm import SamplingParams

    observer = EngineObserver(llm)
    params = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    observer.add_request("pic-A", paged.token_prompt(70, seed=1), params)
    observer.add_request("pic-B", paged.token_prompt(40, seed=2), params)
    observer.step()
    fig = paged.block_pool_figure(llm, num_blocks=32)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "pic-A" in labels and "pic-B" in labels
    observer.run()
    assert set(observer.outputs) == {"pic-A", "pic-B"}


def test_hash_chain_equal_for_a_shared_prefix_only(llm: Any) -> None:
    from vllm import SamplingParams

    block_size = vi.kv_cache_snapshot(llm).block_size
    shared = paged.token_prompt(3 * block_size, seed=99)
    observer = EngineObserver(llm)
    params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    observer.add_request("chain-A", shared + paged.token_prompt(block_size, seed=5), params)
    observer.add_request("chain-B", shared + paged.token_prompt(block_size, seed=6), params)
    observer.step()
    a, b = paged.hash_chain(llm, "chain-A"), paged.hash_chain(llm, "chain-B")
    assert [r["hash"] for r in a[:3]] == [r["hash"] for r in b[:3]]
    assert a[3]["hash"] != b[3]["hash"] and a[3]["parent hash"] == b[3]["parent hash"]
    observer.run()
