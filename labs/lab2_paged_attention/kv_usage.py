"""Blocks against token slots: what the engine's KV usage gauge counts, and what it does not.

vLLM's `kv_cache_usage_perc` (/metrics, `BlockPool.get_usage`) is the share of KV *blocks* in
use. A block is in use as soon as one token is in it, so the gauge can read 66.7% while the
blocks hold tokens in only 36.5% of their slots (vLLM issue 57336). `kv_usage` reads both from
the live scheduler: the gauge, and the tokens the running requests' blocks actually hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labs.core import vllm_internals as vi
from labs.core.live import EngineObserver


@dataclass(frozen=True)
class KVUsage:
    """The KV cache at one moment, counted in blocks and in token slots.

    Attributes:
        step: the engine step after which it was read (0: not inside a run).
        num_blocks: usable blocks in the pool (vLLM's null block excluded).
        block_size: token slots per block.
        blocks_in_use: distinct blocks in the running requests' block tables.
        tokens_held: token slots of those blocks holding a computed token (a block shared through
            the prefix cache counts once).
        gauge: vLLM's own `BlockPool.get_usage()`, the number /metrics exports.
    """

    step: int
    num_blocks: int
    block_size: int
    blocks_in_use: int
    tokens_held: int
    gauge: float

    @property
    def block_usage(self) -> float:
        """Share of the pool's blocks in use: what the gauge shows."""
        return self.blocks_in_use / self.num_blocks

    @property
    def fill(self) -> float:
        """Share of the slots *of the blocks in use* that hold a token (1.0 = no block partly empty)."""
        return self.tokens_held / (self.blocks_in_use * self.block_size) if self.blocks_in_use else 1.0

    @property
    def slot_usage(self) -> float:
        """Share of all the pool's token slots holding a token: the memory really used."""
        return self.tokens_held / (self.num_blocks * self.block_size)

    def row(self) -> dict[str, Any]:
        return {"step": self.step, "blocks in use": self.blocks_in_use, "tokens held": self.tokens_held,
                "gauge (blocks) %": round(100 * self.gauge, 3), "slots of the pool %": round(100 * self.slot_usage, 3),
                "slots of the blocks in use %": round(100 * self.fill, 1)}


def kv_usage(llm: Any, step: int = 0) -> KVUsage:
    """Read the live KV cache now: blocks in use and the token slots they really hold.

    A running request with C computed tokens fills its block i with min(block_size,
    C - i * block_size) tokens; the token it sampled last is not computed yet, so it holds no slot.

    Args:
        llm: a `vllm.LLM` whose engine core runs in this process.
        step: recorded on the result (the step after which it is read).
    """
    snap = vi.kv_cache_snapshot(llm)
    filled: dict[int, int] = {}
    for req in vi.queue_snapshot(llm)["running"]:
        for i, block_id in enumerate(req.block_ids):
            in_block = min(snap.block_size, max(0, req.num_computed_tokens - i * snap.block_size))
            filled[block_id] = max(filled.get(block_id, 0), in_block)
    return KVUsage(step, snap.num_blocks, snap.block_size, len(filled), sum(filled.values()), snap.usage)


def usage_over_steps(llm: Any, prompt_lens: list[int], max_tokens: int, seed: int = 5700) -> list[KVUsage]:
    """Run requests of `prompt_lens` tokens (`max_tokens` each) and read `kv_usage` after every step.

    Args:
        llm: an idle `vllm.LLM` (engine core in this process).
        prompt_lens: one prompt length per request (distinct random token ids, no shared prefix).
        max_tokens: output tokens per request (EOS ignored: exactly this many).
        seed: picks the prompts.

    Returns:
        One `KVUsage` per engine step, in order.
    """
    from vllm import SamplingParams

    from labs.lab2_paged_attention.paged import token_prompt

    observer = EngineObserver(llm)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for i, n in enumerate(prompt_lens):
        observer.add_request(f"usage-{i}", token_prompt(n, seed=seed + i), params)
    rows = []
    while observer.has_unfinished_requests():
        obs = observer.step()
        rows.append(kv_usage(llm, obs.step))
    return rows


def usage_figure(rows: list[KVUsage]) -> Any:
    """Per step: the gauge (blocks in use) against the slots really used, and the fill of the blocks in use."""
    import matplotlib.pyplot as plt

    steps = [r.step for r in rows]
    fig, (ax_pool, ax_fill) = plt.subplots(1, 2, figsize=(11, 3.2))
    ax_pool.plot(steps, [100 * r.gauge for r in rows], "o-", ms=3, label="gauge: blocks in use")
    ax_pool.plot(steps, [100 * r.slot_usage for r in rows], "s-", ms=3, label="token slots holding a token")
    ax_pool.set(xlabel="engine step", ylabel="% of the pool", title="the same cache, counted two ways")
    ax_pool.legend(fontsize=8)
    ax_fill.plot(steps, [100 * r.fill for r in rows], "o-", ms=3, color="tab:green")
    ax_fill.set(xlabel="engine step", ylabel="%", ylim=(0, 105),
                title="slots of the blocks in use that hold a token")
    fig.tight_layout()
    return fig
