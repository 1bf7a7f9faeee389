"""Reference solution for labs/exercises/lab2_paged_attention.py: decode attention over a paged KV cache.

What vLLM's paged attention kernels compute for one decode step, written with plain tensor ops:
gather each sequence's K/V through its block table, mask past its length, softmax, weighted sum.
The kernels do the same without materialising the gathered K/V.
"""

from __future__ import annotations

import torch


def paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of one new token per sequence over its cached context.

    Args:
        query: (num_seqs, num_heads, head_dim), the new token of each sequence.
        key_cache: (num_blocks, block_size, num_kv_heads, head_dim).
        value_cache: (num_blocks, block_size, num_kv_heads, head_dim).
        block_tables: (num_seqs, max_num_blocks_per_seq) int; row i lists sequence i's blocks in
            token order, padded with 0 (the null block).
        seq_lens: (num_seqs,) int, tokens of context per sequence including the new one (whose
            K/V are already written to the cache).
        scale: softmax scale, usually head_dim ** -0.5.

    Returns:
        (num_seqs, num_heads, head_dim), in query's dtype.
    """
    num_seqs, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    max_num_blocks_per_seq = block_tables.shape[1]
    max_len = max_num_blocks_per_seq * block_size

    # Token t of sequence i lives in block block_tables[i, t // block_size] at offset t % block_size,
    # so indexing the cache with the whole table lays every sequence's tokens out in order.
    keys = key_cache[block_tables.long()].reshape(num_seqs, max_len, num_kv_heads, head_dim)
    values = value_cache[block_tables.long()].reshape(num_seqs, max_len, num_kv_heads, head_dim)

    # Grouped-query attention: query heads h*g .. h*g+g-1 share KV head h (g = num_heads // num_kv_heads).
    num_queries_per_kv = num_heads // num_kv_heads
    keys = keys.repeat_interleave(num_queries_per_kv, dim=2)  # (num_seqs, max_len, num_heads, head_dim)
    values = values.repeat_interleave(num_queries_per_kv, dim=2)  # (num_seqs, max_len, num_heads, head_dim)

    # Accumulate in float32 as the kernels do: bf16 sums over hundreds of tokens lose digits.
    scores = torch.einsum("shd,sthd->sht", query.float(), keys.float()) * scale  # (num_seqs, num_heads, max_len)
    # Slots past seq_len are padding, the null block or another request's leftovers: never attend.
    past_end = torch.arange(max_len, device=query.device)[None, :] >= seq_lens[:, None].to(query.device)
    scores = scores.masked_fill(past_end[:, None, :], float("-inf"))
    probs = scores.softmax(dim=-1)  # (num_seqs, num_heads, max_len)
    out = torch.einsum("sht,sthd->shd", probs, values.float())  # (num_seqs, num_heads, head_dim)
    return out.to(query.dtype)
