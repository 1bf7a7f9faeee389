"""Lab 2 (PagedAttention): the code behind notebooks/02_paged_attention.ipynb.

Everything here reads the real engine's KV cache: block tables, the block pool's ref counts and
cached blocks, prefix-cache hits, and how many tokens the allocated blocks actually hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from labs.core import vllm_internals as vi
from labs.core.live import EngineObserver


def token_prompt(num_tokens: int, seed: int) -> list[int]:
    """A prompt of exactly `num_tokens` token ids (deterministic), so lengths are under our control."""
    rng = np.random.default_rng(seed)
    return rng.integers(100, 3000, size=num_tokens).tolist()


# --- the block pool, drawn ---------------------------------------------------------------------

def block_pool_figure(llm: Any, num_blocks: int = 64, title: str = "") -> Any:
    """A grid of the first `num_blocks` KV blocks: colour = owning request, number = ref_cnt.

    Free blocks are white; free blocks that still hold a cached prefix (reusable until evicted) are
    hatched. Block 0 is vLLM's null block, never handed out.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    states = vi.block_states(llm, num_blocks)
    owners: dict[int, list[str]] = {}
    for req in vi.queue_snapshot(llm)["running"]:
        for block_id in req.block_ids:
            owners.setdefault(block_id, []).append(vi.external_request_id(req.request_id))
    request_ids = sorted({r for rs in owners.values() for r in rs})
    colours = {rid: plt.cm.tab20(i % 20) for i, rid in enumerate(request_ids)}
    cols = 16
    rows = math.ceil(len(states) / cols)
    fig, ax = plt.subplots(figsize=(cols * 0.55, rows * 0.6 + 0.8))
    for state in states:
        r, c = divmod(state.block_id, cols)
        owner = owners.get(state.block_id)
        face = "black" if state.block_id == 0 else colours[owner[0]] if owner else "white"
        hatch = "///" if state.is_cached and not owner else None
        ax.add_patch(Rectangle((c, -r), 0.92, 0.92, facecolor=face, edgecolor="grey", hatch=hatch))
        label = "null" if state.block_id == 0 else str(state.ref_cnt) if state.ref_cnt else ""
        ax.text(c + 0.46, -r + 0.46, label, ha="center", va="center", fontsize=7,
                color="white" if state.block_id == 0 else "black")
    ax.set_xlim(0, cols)
    ax.set_ylim(-rows + 0.9, 1.0)
    ax.axis("off")
    legend = [Patch(facecolor=colours[r], label=r) for r in request_ids]
    legend += [Patch(facecolor="white", edgecolor="grey", hatch="///", label="free, cached prefix"),
               Patch(facecolor="white", edgecolor="grey", label="free")]
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    snap = vi.kv_cache_snapshot(llm)
    ax.set_title(title or f"first {len(states)} of {snap.num_blocks} blocks ({snap.block_size} tokens each); "
                          f"numbers = ref_cnt; {snap.num_free_blocks} free", fontsize=9)
    fig.tight_layout()
    return fig


def hash_chain(llm: Any, request_id: str) -> list[dict[str, Any]]:
    """A running request's prefix-cache hash chain, block by block (short hex of vLLM's hashes)."""
    block_ids = vi.request_block_ids(llm, request_id)
    hashes = vi.request_block_hashes(llm, request_id)
    rows, parent = [], "none"
    for i, block_hash in enumerate(hashes):
        short = bytes(block_hash).hex()[:10]
        rows.append({"request": request_id, "block": i, "block_id": block_ids[i] if i < len(block_ids) else None,
                     "parent hash": parent, "hash": short})
        parent = short
    return rows


# --- prefix caching --------------------------------------------------------------------------

@dataclass(frozen=True)
class PrefixRun:
    request_id: str
    num_prompt_tokens: int
    num_cached_tokens: int  # from the engine's RequestOutput: prompt tokens served from the prefix cache
    ttft_seconds: float  # time of the step that computed the prompt and sampled the first token
    block_ids: list[int]


def prefix_cache_runs(llm: Any, prefix_len: int = 1536, suffix_len: int = 16, num_requests: int = 4,
                      seed: int = 0) -> list[PrefixRun]:
    """Requests that share a long prefix, one after another: the first computes it, the rest hit the cache.

    Args:
        seed: picks the prefix; a prefix this engine has seen before is a hit from the first request.

    Returns:
        One row per request, in order.
    """
    from vllm import SamplingParams

    prefix = token_prompt(prefix_len, seed=seed)
    runs = []
    for i in range(num_requests):
        observer = EngineObserver(llm)
        request_id = f"shared-prefix-{i}"
        observer.add_request(request_id, prefix + token_prompt(suffix_len, seed=100 + i),
                             SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True))
        first = observer.step()  # the whole prompt fits the token budget: this step is the TTFT
        block_ids = first.block_tables.get(request_id, [])
        observer.run()
        out = observer.outputs[request_id]
        runs.append(PrefixRun(request_id, len(out.prompt_token_ids), out.num_cached_tokens or 0,
                              first.seconds, block_ids))
    return runs


def prefix_cache_metrics(llm: Any) -> dict[str, float]:
    """The engine's own prefix-cache counters, as /metrics exports them (needs disable_log_stats=False)."""
    values = {}
    for metric in llm.get_metrics():
        if metric.name in ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits"):
            values[metric.name] = getattr(metric, "value", 0)
    return values


# --- memory waste: paged vs contiguous (the PagedAttention paper's Figure 2) ----------------------

@dataclass(frozen=True)
class WasteResult:
    block_size: int
    max_model_len: int
    seq_lens: list[int]  # tokens per sequence when measured
    num_allocated_blocks: list[int]  # blocks per sequence, from the live engine's block tables
    tokens_per_second: float

    @property
    def paged_utilization(self) -> float:
        return sum(self.seq_lens) / (sum(self.num_allocated_blocks) * self.block_size)

    @property
    def contiguous_utilization(self) -> float:
        """Each sequence pre-reserves max_model_len slots, as systems before vLLM did."""
        return sum(self.seq_lens) / (len(self.seq_lens) * self.max_model_len)

    def max_concurrent_sequences(self, capacity_tokens: int) -> tuple[int, int]:
        """How many sequences of this trace's average size fit in `capacity_tokens`: (paged, contiguous)."""
        mean_blocks = sum(self.num_allocated_blocks) / len(self.num_allocated_blocks)
        return int(capacity_tokens // (mean_blocks * self.block_size)), capacity_tokens // self.max_model_len


def varied_lengths(num_requests: int = 24, low: int = 64, high: int = 1400, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(low, high, size=num_requests).tolist()


def measure_waste(llm: Any, prompt_lens: list[int], max_tokens: int = 16) -> WasteResult:
    """Run the trace; once every request has finished prefill, read the block tables from the engine."""
    from vllm import SamplingParams

    observer = EngineObserver(llm)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for i, n in enumerate(prompt_lens):
        observer.add_request(f"seq-{i}", token_prompt(n, seed=i), params)
    snapshot = None
    while observer.has_unfinished_requests():
        obs = observer.step()
        if snapshot is None and not obs.waiting_ids and len(obs.running_ids) == len(prompt_lens) \
                and all(n == 1 for n in obs.num_scheduled_tokens.values()):
            snapshot = {r.request_id: (r.num_computed_tokens, len(r.block_ids))
                        for r in vi.queue_snapshot(llm)["running"]}
    if snapshot is None:
        raise RuntimeError("the trace never had all requests running at once: raise max_num_seqs or the KV cache")
    seconds = sum(o.seconds for o in observer.history)
    num_output_tokens = sum(len(o.outputs[0].token_ids) for o in observer.outputs.values())
    return WasteResult(
        block_size=vi.kv_cache_snapshot(llm).block_size,
        max_model_len=llm.llm_engine.model_config.max_model_len,
        seq_lens=[n for n, _ in snapshot.values()],
        num_allocated_blocks=[b for _, b in snapshot.values()],
        tokens_per_second=num_output_tokens / seconds,
    )


def waste_figure(result: WasteResult) -> Any:
    """Allocated vs used KV slots per sequence, paged and contiguous, side by side."""
    import matplotlib.pyplot as plt

    order = np.argsort(result.seq_lens)
    used = np.array(result.seq_lens)[order]
    paged = np.array(result.num_allocated_blocks)[order] * result.block_size
    x = np.arange(len(used))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
    for ax, reserved, name, util in (
        (axes[0], np.full_like(used, result.max_model_len), "contiguous (reserve max_model_len)",
         result.contiguous_utilization),
        (axes[1], paged, f"paged (blocks of {result.block_size})", result.paged_utilization),
    ):
        ax.bar(x, reserved, color="#f4b6b6", label="reserved, unused")
        ax.bar(x, used, color="#4c72b0", label="holding tokens")
        ax.set_title(f"{name}: {util:.1%} of KV slots used", fontsize=10)
        ax.set_xlabel("sequences (sorted by length)")
    axes[0].set_ylabel("KV slots (tokens)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep_block_sizes() -> list[int]:
    """Block sizes worth comparing here: vLLM's CPU attention needs multiples of 32; GPUs also take 16."""
    from labs.core.hardware import detect_hardware

    return [16, 32, 64, 128] if detect_hardware().device == "cuda" else [32, 64, 128]


def block_size_sweep(block_sizes: list[int], prompt_lens: list[int], model: str | None = None,
                     **engine_kwargs: Any) -> list[WasteResult]:
    """One engine per block size, the same trace through each: waste vs throughput.

    Starting an engine takes ~15 s on 2 CPU cores; each is freed before the next starts.
    """
    from labs.core.engine import free_llm, make_llm

    results = []
    for block_size in block_sizes:
        llm = make_llm(model, block_size=block_size, verbose=False, **engine_kwargs)
        try:
            results.append(measure_waste(llm, prompt_lens))
        finally:
            free_llm(llm)
    return results
