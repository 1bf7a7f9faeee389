"""The version-checked door to vLLM internals, on the real engine."""

from __future__ import annotations

from typing import Any

import pytest

from labs.core import vllm_internals as vi


def test_installed_vllm_is_the_pinned_version() -> None:
    assert vi.check_vllm_version().split("+")[0] == vi.PINNED_VLLM_VERSION


@pytest.mark.parametrize("other", ["0.31.0", "0.33.0", "1.0.0+cpu"])
def test_other_versions_fail_with_a_message_naming_the_pinned_one(other: str) -> None:
    with pytest.raises(vi.VllmVersionError) as err:
        vi.check_vllm_version(installed=other)
    assert other in str(err.value) and vi.PINNED_VLLM_VERSION in str(err.value)


@pytest.mark.engine
def test_live_kv_cache_snapshot(llm: Any) -> None:
    snap = vi.kv_cache_snapshot(llm)
    assert snap.num_blocks > 0 and 0 <= snap.num_free_blocks <= snap.num_blocks
    assert snap.block_size == llm.llm_engine.vllm_config.cache_config.block_size
    assert len(vi.kv_cache_tensors(llm)) == llm.llm_engine.model_config.hf_config.num_hidden_layers


@pytest.mark.engine
def test_live_queues_and_block_tables(llm: Any) -> None:
    from vllm import SamplingParams

    engine = llm.llm_engine
    engine.add_request("queued-a", {"prompt_token_ids": list(range(10, 80))}, SamplingParams(max_tokens=4))
    queues = vi.queue_snapshot(llm)
    assert [r.request_id.startswith("queued-a") for r in queues["waiting"]] == [True]
    engine.step()
    (running,) = vi.queue_snapshot(llm)["running"]
    assert running.num_computed_tokens == 70
    assert vi.request_block_ids(llm, "queued-a") == running.block_ids
    assert len(running.block_ids) == -(-70 // vi.kv_cache_snapshot(llm).block_size)
    while engine.has_unfinished_requests():
        engine.step()
    with pytest.raises(KeyError, match="queued-a"):
        vi.request_block_ids(llm, "queued-a")
