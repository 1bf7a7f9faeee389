"""The capstone's predictions, checked against the live server and the pipeline's real plan.

    chunks         how many chunks the pipeline cuts a document into: its own plan (`make_plan`),
                   made for the live server (its `max_model_len` from /v1/models, its tokenizer)
    prefix cache   how many prompt tokens the server's prefix cache served while one document was
                   translated: `vllm:prefix_cache_hits_total` from /metrics, read before and after

Why here and not in the notebook: the same functions are tested against the real job and the
server's own counters (tests/test_capstone_translation_predictions.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from labs.core import bench
from labs.core.predict import Verdict, check_number
from labs.capstone_translation.endpoint import Endpoint, TokenCounter
from labs.capstone_translation.pipeline import DocumentPlan, TranslateConfig, make_plan, recommended_chunking
from labs.capstone_translation.source import read_document
from labs.core.bench.server_metrics import fetch_metrics_text
from labs.core.models.prompt_format import PromptTemplate

HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"


def plan_document(path: Path, endpoint: Endpoint, counter: TokenCounter,
                  max_chunk_tokens: int | None | str = "auto") -> DocumentPlan:
    """The pipeline's own plan of `path` for this server, exactly as `run_job` makes it."""
    return make_plan(read_document(path), PromptTemplate.load(), counter, endpoint,
                     TranslateConfig(max_chunk_tokens=max_chunk_tokens))


def chunking_facts(path: Path, endpoint: Endpoint, counter: TokenCounter,
                   max_chunk_tokens: int | None | str = "auto") -> str:
    """What a learner needs to predict the chunks: paragraphs, tokens and the pipeline's limits."""
    doc = read_document(path)
    auto_tokens, auto_paragraphs = recommended_chunking(endpoint.root)
    tokens = auto_tokens if max_chunk_tokens == "auto" else max_chunk_tokens
    limit = (f"at most {auto_paragraphs} paragraph(s) per chunk (the model's build_info.json)"
             if auto_paragraphs else "no paragraph limit")
    return (f"{path.name}: {len(doc.paragraphs)} paragraphs, {counter.count_text(doc.text)} tokens; the pipeline "
            f"cuts on paragraph boundaries, at most {tokens} source tokens per chunk, {limit}; context "
            f"{endpoint.max_model_len} tokens (from /v1/models)")


def check_num_chunks(predicted: float | None, path: Path, endpoint: Endpoint, counter: TokenCounter,
                     max_chunk_tokens: int | None | str = "auto", quiet: bool = False) -> Verdict:
    """The learner's number of chunks for `path`, against the pipeline's plan for the live server."""
    plan = plan_document(path, endpoint, counter, max_chunk_tokens)
    sizes = [c.end - c.start for c in plan.chunks]
    why = (f"make_plan for {endpoint.model} at {endpoint.base_url} (max_model_len {endpoint.max_model_len}, token "
           f"counts: {counter.source}): {len(plan.segments)} segments over {len(plan.chunks)} chunks of "
           f"{min(sizes)}-{max(sizes)} segment(s); each chunk's budget is the context minus the shared prompt "
           f"({plan.num_shared_tokens} tokens) and room for the answer, and never more than the chunk limit.")
    return check_number(f"chunks for {path.name}", predicted, len(plan.chunks), why, quiet=quiet)


@dataclass
class PrefixCacheCount:
    """Prompt tokens the server's prefix cache served (hits) out of those it looked up (queries)
    between entering and leaving `prefix_cache_counted`; filled on exit."""

    hits: int = 0
    queries: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else float("nan")


@contextmanager
def prefix_cache_counted(base_url: str, api_key: str | None = None) -> Iterator[PrefixCacheCount]:
    """Count the prefix-cache tokens the server at `base_url` serves while the block runs (its /metrics)."""
    count = PrefixCacheCount()
    before = bench.snapshot(base_url, api_key)
    yield count
    time.sleep(0.5)  # the server records a request's statistics just after its last chunk is streamed
    run = bench.delta(before, bench.snapshot(base_url, api_key))
    count.hits, count.queries = int(run.counters.get(HITS, 0)), int(run.counters.get(QUERIES, 0))


def server_block_size(base_url: str, api_key: str | None = None) -> int | None:
    """The KV block size the server runs with, from the `block_size` label of `vllm:cache_config_info`."""
    match = re.search(r'vllm:cache_config_info\{[^}]*block_size="(\d+)"',
                      fetch_metrics_text(base_url, api_key))
    return int(match.group(1)) if match else None


def check_prefix_cache_hits(predicted: float | None, count: PrefixCacheCount, plan: DocumentPlan,
                            block_size: int | None = None, tolerance: float = 0.25,
                            quiet: bool = False) -> Verdict:
    """The learner's prefix-cache tokens for one document, against the server's counter (right within 25%)."""
    blocks = (f"whole KV blocks of {block_size} tokens, so each chunk reuses at most "
              f"{plan.num_shared_tokens // block_size * block_size} of them" if block_size else "whole KV blocks")
    why = (f"vllm:prefix_cache_hits_total went up by {count.hits:,} of {count.queries:,} prompt tokens looked up "
           f"({count.hit_rate:.0%}) while the document's {len(plan.chunks)} chunks were translated. Every chunk's "
           f"prompt starts with the same {plan.num_shared_tokens}-token shared prompt, and the cache serves "
           f"{blocks}: the first chunk computes them and every later chunk can reuse them; a server that has "
           "seen this shared prompt before (another run) serves the first chunk's too, and one that translated "
           "this document before also the chunks' own text.")
    return check_number("prompt tokens served from the prefix cache", predicted, count.hits, why,
                        tolerance=tolerance, relative=True, unit=" tokens", quiet=quiet)
