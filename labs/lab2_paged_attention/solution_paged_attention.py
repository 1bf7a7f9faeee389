"""Reference solution for labs/lab2_paged_attention/exercise_paged_attention.py: decode attention over a paged KV cache.

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
    max_len = block_tables.shape[1] * block_size

    # Token t of sequence i lives in block block_tables[i, t // block_size] at offset t % block_size,
    # so gathering the cache's blocks in table order lays every sequence's tokens out in order.
    flat_block_ids = block_tables.flatten().long()
    keys = key_cache.index_select(0, flat_block_ids).view(num_seqs, max_len, num_kv_heads, head_dim)
    values = value_cache.index_select(0, flat_block_ids).view(num_seqs, max_len, num_kv_heads, head_dim)
    keys = keys.transpose(1, 2)  # (num_seqs, num_kv_heads, max_len, head_dim)
    values = values.transpose(1, 2)  # (num_seqs, num_kv_heads, max_len, head_dim)

    # Grouped-query attention: query heads h*g .. h*g+g-1 share KV head h (g = num_heads // num_kv_heads).
    # Viewing the queries as (kv head, group) lets all g heads read one KV head without copying it g times.
    num_queries_per_kv = num_heads // num_kv_heads
    q = query.view(num_seqs, num_kv_heads, num_queries_per_kv, head_dim)  # (num_seqs, num_kv_heads, g, head_dim)

    # Slots past seq_len are padding, the null block or another request's leftovers: never attend.
    attend = torch.arange(max_len, device=query.device)[None, :] < seq_lens[:, None].to(query.device)
    # scaled_dot_product_attention = softmax(q k^T * scale + mask) v, fused (and accumulated in float32).
    out = torch.nn.functional.scaled_dot_product_attention(
        q, keys, values, attn_mask=attend[:, None, None, :], scale=scale)  # (num_seqs, num_kv_heads, g, head_dim)
    return out.reshape(num_seqs, num_heads, head_dim)
