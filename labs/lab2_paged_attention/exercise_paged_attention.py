"""Lab 2 exercise: decode attention over a paged KV cache (what vLLM's paged attention computes).

A sequence's K/V are not contiguous: they live in fixed-size blocks scattered over one big cache
tensor, and the sequence's block table says which blocks, in token order. Write the attention of
one new token per sequence over its cached context, with plain tensor ops.

Run `make grade LAB=2`: tests/exercises/test_lab2_paged_attention.py compares your output with
torch's scaled_dot_product_attention on the same K/V laid out contiguously.
"""

from __future__ import annotations

import torch


def paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of one new token per sequence over its cached context.

    Hints:
    - Token t of sequence i is at key_cache[block_tables[i, t // block_size], t % block_size].
      Indexing the cache with the whole table, `key_cache[block_tables.long()]`, gathers every
      sequence's blocks at once: (num_seqs, max_num_blocks_per_seq, block_size, num_kv_heads,
      head_dim); reshape it to (num_seqs, max_len, num_kv_heads, head_dim).
    - Grouped-query attention: num_heads = g * num_kv_heads and query heads h*g .. h*g+g-1 all
      use KV head h (`repeat_interleave`, not `repeat`).
    - Slots at positions >= seq_lens[i] are padding (block 0, the null block) or leftovers of
      other requests: mask their scores to -inf before the softmax.
    - Compute in float32 and return query's dtype.

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
    raise NotImplementedError("Exercise 8: paged attention")
