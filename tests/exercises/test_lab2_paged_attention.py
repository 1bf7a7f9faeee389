"""Grades Lab 2's paged attention against dense attention on the same K/V.

Each case draws random K/V per sequence, scatters them into a paged cache through a shuffled
(non-contiguous) block table, fills every other slot with large garbage, and compares the
implementation under test with torch's scaled_dot_product_attention run on the contiguous K/V.

Runs the reference by default; `make grade LAB=2` (LABS_GRADE=learner) runs yours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from labs.core.grading import load_implementation
from labs.lab2_paged_attention import solution_paged_attention as reference


@pytest.fixture(scope="module")
def impl() -> Any:
    return load_implementation("lab2_paged_attention")


@dataclass(frozen=True)
class Case:
    name: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    seq_lens: tuple[int, ...]
    dtype: torch.dtype = torch.float32


CASES = [
    Case("mha_block16", num_heads=4, num_kv_heads=4, head_dim=64, block_size=16, seq_lens=(1, 17, 40)),
    Case("gqa4_block16_ragged", num_heads=8, num_kv_heads=2, head_dim=64, block_size=16, seq_lens=(33, 5, 64, 16)),
    Case("mqa_block32", num_heads=4, num_kv_heads=1, head_dim=32, block_size=32, seq_lens=(33, 100)),
    Case("tiny_model_block32", num_heads=4, num_kv_heads=2, head_dim=64, block_size=32, seq_lens=(5, 64, 70)),
    Case("tiny_model_bf16", num_heads=4, num_kv_heads=2, head_dim=64, block_size=32, seq_lens=(31, 96, 1),
         dtype=torch.bfloat16),
]
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}  # bf16: output rounding (8 bits of mantissa)

PagedAttention = Callable[..., torch.Tensor]


@dataclass
class Inputs:
    query: torch.Tensor  # (num_seqs, num_heads, head_dim)
    key_cache: torch.Tensor  # (num_blocks, block_size, num_kv_heads, head_dim)
    value_cache: torch.Tensor  # (num_blocks, block_size, num_kv_heads, head_dim)
    block_tables: torch.Tensor  # (num_seqs, max_num_blocks_per_seq)
    seq_lens: torch.Tensor  # (num_seqs,)
    keys: list[torch.Tensor]  # per sequence (seq_len, num_kv_heads, head_dim), contiguous
    values: list[torch.Tensor]
    scale: float


def make_inputs(case: Case, seed: int = 0) -> Inputs:
    """Random K/V per sequence, scattered into a paged cache whose other slots hold garbage."""
    gen = torch.Generator().manual_seed(seed)
    kv_shape = (case.num_kv_heads, case.head_dim)
    num_blocks_per_seq = [-(-seq_len // case.block_size) for seq_len in case.seq_lens]
    num_blocks = 1 + sum(num_blocks_per_seq) + 3  # the null block, the sequences', 3 unused
    # Garbage 100x the data: attending to any slot that is not the sequence's own shows.
    key_cache = 100 * torch.randn(num_blocks, case.block_size, *kv_shape, generator=gen)
    value_cache = 100 * torch.randn(num_blocks, case.block_size, *kv_shape, generator=gen)
    shuffled_block_ids = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()  # never block 0
    block_tables = torch.zeros(len(case.seq_lens), max(num_blocks_per_seq), dtype=torch.int32)
    keys, values = [], []
    for seq, seq_len in enumerate(case.seq_lens):
        block_ids = [shuffled_block_ids.pop() for _ in range(num_blocks_per_seq[seq])]
        block_tables[seq, :len(block_ids)] = torch.tensor(block_ids)
        seq_keys = torch.randn(seq_len, *kv_shape, generator=gen)
        seq_values = torch.randn(seq_len, *kv_shape, generator=gen)
        for pos in range(seq_len):
            key_cache[block_ids[pos // case.block_size], pos % case.block_size] = seq_keys[pos]
            value_cache[block_ids[pos // case.block_size], pos % case.block_size] = seq_values[pos]
        keys.append(seq_keys.to(case.dtype))
        values.append(seq_values.to(case.dtype))
    query = torch.randn(len(case.seq_lens), case.num_heads, case.head_dim, generator=gen).to(case.dtype)
    return Inputs(query, key_cache.to(case.dtype), value_cache.to(case.dtype), block_tables,
                  torch.tensor(case.seq_lens, dtype=torch.int32), keys, values, case.head_dim ** -0.5)


def dense_attention(inputs: Inputs) -> torch.Tensor:
    """The truth: torch's SDPA per sequence on its contiguous K/V, in float32."""
    outputs = []
    for seq, (keys, values) in enumerate(zip(inputs.keys, inputs.values)):
        q = inputs.query[seq].float()[None, :, None, :]  # (1, num_heads, 1, head_dim)
        k = keys.float().transpose(0, 1)[None]  # (1, num_kv_heads, seq_len, head_dim)
        v = values.float().transpose(0, 1)[None]
        out = F.scaled_dot_product_attention(q, k, v, scale=inputs.scale, enable_gqa=True)
        outputs.append(out[0, :, 0])  # (num_heads, head_dim)
    return torch.stack(outputs)  # (num_seqs, num_heads, head_dim)


def check_against_dense(paged_attention: PagedAttention, case: Case) -> None:
    inputs = make_inputs(case)
    got = paged_attention(inputs.query, inputs.key_cache, inputs.value_cache, inputs.block_tables,
                          inputs.seq_lens, inputs.scale)
    expected = dense_attention(inputs)
    assert got.shape == expected.shape, f"case {case.name}: output shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    assert got.dtype == case.dtype, f"case {case.name}: output dtype {got.dtype}, expected the query's {case.dtype}"
    error = (got.float() - expected).abs().amax(dim=-1)  # (num_seqs, num_heads)
    tolerance = TOLERANCE[case.dtype]
    if error.max() > tolerance:
        rows = [f"  seq {seq} (seq_len {case.seq_lens[seq]:>3}, blocks {inputs.block_tables[seq].tolist()}): "
                f"max |yours - dense| per head = {[round(e, 4) for e in error[seq].tolist()]}"
                for seq in range(len(case.seq_lens))]
        raise AssertionError(
            f"case {case.name} (num_heads={case.num_heads}, num_kv_heads={case.num_kv_heads}, "
            f"block_size={case.block_size}, {case.dtype}): paged attention differs from dense "
            f"attention by up to {error.max():.3g} (tolerance {tolerance})\n" + "\n".join(rows))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_paged_attention_equals_dense_attention(impl: Any, case: Case) -> None:
    check_against_dense(impl.paged_attention, case)


# --- The grader itself: wrong paged attention must fail --------------------------------------

def ignores_seq_lens(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                     block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Attends to every slot of the block table, padding and partly filled last blocks included."""
    all_slots = torch.full_like(seq_lens, block_tables.shape[1] * key_cache.shape[1])
    return reference.paged_attention(query, key_cache, value_cache, block_tables, all_slots, scale)


def groups_heads_with_repeat(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                             block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Pairs query head h with KV head h % num_kv_heads (`repeat`), not h // group size."""
    group_size = query.shape[1] // key_cache.shape[2]
    return reference.paged_attention(query, key_cache.repeat(1, 1, group_size, 1),
                                     value_cache.repeat(1, 1, group_size, 1), block_tables, seq_lens, scale)


def assumes_contiguous_blocks(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                              block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Reads only each sequence's first block id and assumes the rest follow it."""
    first = block_tables[:, :1].long()
    contiguous = (first + torch.arange(block_tables.shape[1])) % key_cache.shape[0]
    return reference.paged_attention(query, key_cache, value_cache, contiguous, seq_lens, scale)


@pytest.mark.parametrize(("wrong", "case_name"), [
    (ignores_seq_lens, "mha_block16"),
    (ignores_seq_lens, "tiny_model_block32"),
    (groups_heads_with_repeat, "gqa4_block16_ragged"),
    (assumes_contiguous_blocks, "mqa_block32"),
])
def test_grader_catches_wrong_paged_attention(wrong: PagedAttention, case_name: str) -> None:
    case = next(c for c in CASES if c.name == case_name)
    with pytest.raises(AssertionError) as failure:
        check_against_dense(wrong, case)
    message = str(failure.value)
    assert f"case {case_name}" in message and "differs from dense attention" in message, message
    assert "max |yours - dense| per head" in message, message


def test_learner_file_mirrors_the_reference() -> None:
    import inspect

    learner = load_implementation("lab2_paged_attention", "learner")
    assert inspect.signature(learner.paged_attention) == inspect.signature(reference.paged_attention)
