"""The capstone's prediction checks: the chunk count and the prefix-cache tokens read from the real server
are right, and a wrong guess is called wrong.

One sample document is translated on the session's shared server (`vllm_server`), one request at a
time so the cache's share is bounded from below. Independent expectations: the chunks the real job
translated (and logged), and the server's prefix-cache counters against the prompt tokens the
server reported per request and its KV block size.
"""

from __future__ import annotations

from typing import Any

import pytest

from labs.core.predict import NO_PREDICTION
from labs.core.serve import OwnedServer
from labs.capstone_translation import predictions
from labs.capstone_translation.endpoint import connect, token_counter
from labs.capstone_translation.pipeline import TranslateConfig
from labs.capstone_translation.run import run_job
from labs.capstone_translation.samples import write_samples

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def translated(vllm_server: OwnedServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The first sample document, planned for the live server and translated on it, its cache counted."""
    work = tmp_path_factory.mktemp("capstone-predictions")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_API_KEY", vllm_server.api_key or "")
        endpoint = connect(vllm_server.url)
        counter = token_counter(endpoint)
        [path] = write_samples(work / "in")[:1]
        plan = predictions.plan_document(path, endpoint, counter)
        with predictions.prefix_cache_counted(vllm_server.url, vllm_server.api_key) as cache:
            job = run_job([path], TranslateConfig(out_dir=work / "out", progress=False, concurrency=1),
                          base_url=vllm_server.url)
    return {"endpoint": endpoint, "counter": counter, "path": path, "plan": plan, "cache": cache, "job": job,
            "block_size": predictions.server_block_size(vllm_server.url, vllm_server.api_key)}


def test_the_chunk_count_is_the_real_jobs(translated: dict[str, Any]) -> None:
    [doc] = translated["job"].documents
    assert doc.status == "translated", doc.error
    log = doc.paths.log.read_text(encoding="utf-8")
    assert doc.num_chunks == log.count("--- chunk ") >= 2, "the sample is split, and every chunk was sent"
    args = (translated["path"], translated["endpoint"], translated["counter"])
    assert len(translated["plan"].chunks) == doc.num_chunks
    assert predictions.check_num_chunks(doc.num_chunks, *args, quiet=True).right is True
    wrong = predictions.check_num_chunks(doc.num_chunks + 3, *args, quiet=True)
    assert wrong.right is False and "wrong by +3" in wrong.message
    none = predictions.check_num_chunks(None, *args, quiet=True)
    assert none.right is None and NO_PREDICTION in none.message and "max_model_len 2048" in none.message
    assert "paragraphs" in predictions.chunking_facts(*args)


def test_prefix_cache_tokens_come_from_the_servers_counters(translated: dict[str, Any]) -> None:
    cache, plan, block = translated["cache"], translated["plan"], translated["block_size"]
    df = translated["job"].requests_df
    assert block and block > 0
    assert cache.queries == df["prompt_len"].sum(), "every prompt token was looked up once"
    # one at a time: each chunk after the first reuses the shared prompt's whole blocks at least
    shared_blocks = plan.num_shared_tokens // block * block
    assert (len(df) - 1) * shared_blocks <= cache.hits <= cache.queries - len(df), (cache, shared_blocks, len(df))
    assert cache.hits > 0
    right = predictions.check_prefix_cache_hits(cache.hits, cache, plan, block, quiet=True)
    assert right.right is True and f"{block} tokens" in right.message
    assert predictions.check_prefix_cache_hits(cache.hits * 1.2, cache, plan, block, quiet=True).right is True
    wrong = predictions.check_prefix_cache_hits(cache.hits * 2, cache, plan, block, quiet=True)
    assert wrong.right is False and "wrong by" in wrong.message
    none = predictions.check_prefix_cache_hits(None, cache, plan, block, quiet=True)
    assert none.right is None and NO_PREDICTION in none.message
