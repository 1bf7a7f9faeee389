"""Attention over a paged KV cache: write this step's K/V into their slots, read every earlier one.

vLLM's model code never sees requests: one flat batch of tokens goes through every layer, and
only attention needs to know which tokens belong to which request and where each request's
K/V live. That knowledge is the `AttentionMetadata` the model runner builds once per step
(vLLM: `CommonAttentionMetadata`), passed explicitly down the model.

Two kinds of sequences can share a batch (continuous batching with chunked prefill):
- decode-shaped: one new token (a decode step, or a prefill whose prefix hit left one token).
  All of them go through Lab 2's `paged_attention` in one call, reading K/V through block tables.
- prefill-shaped: several new tokens (a prompt, or a chunk of one). Each is its own dense causal
  attention over its whole context, gathered from the cache (earlier chunks and prefix-cache
  hits live only there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from labs.core.grading import engine_part


@dataclass
class PrefillChunk:
    """One prefill-shaped sequence of the batch.

    Attributes:
        query_start: its first row in the flat batch of tokens.
        query_end: one past its last row.
        context_slot_mapping: (seq_len,) the cache slot of every token of its context, earlier
            ones first, this chunk's last (they were just written there).
    """

    query_start: int
    query_end: int
    context_slot_mapping: torch.Tensor


@dataclass
class AttentionMetadata:
    """Where every token of the step sits in the batch and in the KV cache.

    Attributes:
        slot_mapping: (num_tokens,) cache slot (block_id * block_size + offset) of each new token.
        decode_token_indices: (num_decodes,) batch rows of the decode-shaped sequences.
        decode_block_tables: (num_decodes, max_num_blocks) their block ids, padded with 0.
        decode_seq_lens: (num_decodes,) their context lengths, the new token included.
        prefills: the prefill-shaped sequences.
    """

    slot_mapping: torch.Tensor
    decode_token_indices: torch.Tensor
    decode_block_tables: torch.Tensor
    decode_seq_lens: torch.Tensor
    prefills: list[PrefillChunk]


class PagedAttention(torch.nn.Module):
    """Attention of one layer, reading and writing that layer's slice of the paged KV cache."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        # Set by the model runner once it has allocated the cache (see ModelRunner.allocate_kv_cache);
        # empty until then, e.g. while loading weights.
        self.key_cache = torch.empty(0)  # (num_blocks, block_size, num_kv_heads, head_dim)
        self.value_cache = torch.empty(0)  # (num_blocks, block_size, num_kv_heads, head_dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attn_metadata: AttentionMetadata) -> torch.Tensor:
        """Args:
            query: (num_tokens, num_heads, head_dim), rotary embedding applied.
            key: (num_tokens, num_kv_heads, head_dim), rotary embedding applied.
            value: (num_tokens, num_kv_heads, head_dim).
            attn_metadata: the step's layout.

        Returns:
            (num_tokens, num_heads, head_dim) attention output of every token.
        """
        # The cache viewed as one row per token slot: slot s is block s // block_size, offset s % block_size.
        key_slots = self.key_cache.view(-1, self.num_kv_heads, self.head_dim)  # (num_slots, num_kv_heads, head_dim)
        value_slots = self.value_cache.view(-1, self.num_kv_heads, self.head_dim)
        # Write first: a token attends to itself, and later chunks/requests read these slots.
        # (index_copy_, not `key_slots[slot_mapping] = key`: the same write, far faster on CPU.)
        key_slots.index_copy_(0, attn_metadata.slot_mapping, key)
        value_slots.index_copy_(0, attn_metadata.slot_mapping, value)

        output = torch.empty_like(query)
        if attn_metadata.decode_token_indices.numel():
            rows = attn_metadata.decode_token_indices
            output[rows] = engine_part("lab2_paged_attention").paged_attention(query[rows], self.key_cache, self.value_cache,
                                           attn_metadata.decode_block_tables, attn_metadata.decode_seq_lens,
                                           self.scale)
        for chunk in attn_metadata.prefills:
            output[chunk.query_start:chunk.query_end] = self._prefill_attention(
                query[chunk.query_start:chunk.query_end], key_slots[chunk.context_slot_mapping],
                value_slots[chunk.context_slot_mapping])
        return output

    def _prefill_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Causal attention of a chunk's `num_queries` tokens, which are the last of its context.

        Args:
            query: (num_queries, num_heads, head_dim).
            key: (seq_len, num_kv_heads, head_dim), the whole context.
            value: (seq_len, num_kv_heads, head_dim).

        Returns:
            (num_queries, num_heads, head_dim).
        """
        num_queries, seq_len = query.shape[0], key.shape[0]
        # Query i sits at position seq_len - num_queries + i and may see keys up to it.
        mask = torch.ones(num_queries, seq_len, dtype=torch.bool, device=query.device).tril(seq_len - num_queries)
        out = F.scaled_dot_product_attention(
            query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1),  # (heads, tokens, head_dim)
            attn_mask=mask, scale=self.scale, enable_gqa=self.num_heads != self.num_kv_heads)
        return out.transpose(0, 1)
