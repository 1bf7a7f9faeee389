"""Megatron-style tensor-parallel Qwen2 layers, from scratch: what vLLM's `*ParallelLinear` classes do.

One rank builds its own share of every layer (`build_rank_model(model_dir, rank, world_size, ...)`):
- `ColumnParallelLinear`: a slice of the output features (q/k/v by heads, gate/up); no communication.
- `RowParallelLinear`: a slice of the input features (o_proj, down_proj); its partial outputs are
  summed over the ranks by the one `all_reduce` it calls.
- `VocabParallelEmbedding`: a slice of the vocabulary; ids outside it look up zeros, then a reduce.
So a decoder block makes exactly two all-reduces. Parameter names are the checkpoint's (as in
`labs.core.mini.model`), and norms, RoPE and the attention math (`Qwen2AttentionBase`) are reused
from there: only the split is new.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from labs.core.errors import WorkbookError
from labs.core.mini.config import ModelShape
from labs.core.mini.attention import AttentionMetadata
from labs.core.mini.model import Qwen2AttentionBase, RMSNorm, RotaryEmbedding
from labs.core.grading import reference

AllReduce = Callable[..., torch.Tensor]  # (tensor, call_site="") -> tensor summed over ranks


class TensorParallelConfigError(WorkbookError):
    """A model cannot be split over this many ranks; the message says which size does not divide."""


def head_ids_for_rank(rank: int, world_size: int, num_heads: int) -> list[int]:
    """Which heads rank `rank` holds (vLLM's rule): a contiguous split, or one replicated head.

    With fewer KV heads than ranks (GQA: 2 KV heads, 4 ranks) each rank keeps the one KV head its
    query heads read: world_size / num_heads ranks hold a copy of each.
    """
    if num_heads >= world_size:
        if num_heads % world_size:
            raise TensorParallelConfigError(f"{num_heads} heads do not split evenly over {world_size} ranks; "
                                            "choose a tensor_parallel_size that divides the number of heads.")
        per_rank = num_heads // world_size
        return list(range(rank * per_rank, (rank + 1) * per_rank))
    if world_size % num_heads:
        raise TensorParallelConfigError(f"{world_size} ranks cannot share {num_heads} KV heads evenly.")
    return [rank * num_heads // world_size]


def rows_of_heads(weight: torch.Tensor, head_ids: list[int], head_dim: int) -> torch.Tensor:
    """The rows of a (num_heads * head_dim, ...) weight or bias that belong to `head_ids`."""
    return torch.cat([weight[h * head_dim:(h + 1) * head_dim] for h in head_ids]).contiguous()


class ColumnParallelLinear(nn.Module):
    """y_r = x W_r^T + b_r: this rank's slice of the output features; every rank needs all of x.

    Args:
        in_features, out_features: the WHOLE layer's sizes.
        rank, world_size: who we are.
        bias: whether the layer has a bias (split like the rows).
        head_dim: shard by attention heads of this size (KV heads may be replicated), not evenly by rows.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, world_size: int,
                 bias: bool = False, head_dim: int | None = None) -> None:
        super().__init__()
        self.rank, self.world_size, self.head_dim = rank, world_size, head_dim
        if head_dim is None:
            if out_features % world_size:
                raise TensorParallelConfigError(f"out_features={out_features} does not split over {world_size} ranks")
            self.head_ids: list[int] | None = None
            out_per_rank = out_features // world_size
        else:
            self.head_ids = head_ids_for_rank(rank, world_size, out_features // head_dim)
            out_per_rank = len(self.head_ids) * head_dim
        self.weight = nn.Parameter(torch.empty(out_per_rank, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_per_rank), requires_grad=False) if bias else None

    def load_full(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Keep this rank's rows of the whole layer's weight (out_features, in_features) and bias."""
        if self.head_ids is None:
            weight, bias = reference("lab4_tensor_parallel").shard_column_parallel(weight, bias, self.rank, self.world_size)
        else:
            weight = rows_of_heads(weight, self.head_ids, self.head_dim)
            bias = None if bias is None else rows_of_heads(bias, self.head_ids, self.head_dim)
        self.weight.data.copy_(weight)
        if self.bias is not None:
            self.bias.data.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)  # (num_tokens, out_features / world_size)


class RowParallelLinear(nn.Module):
    """y = sum_r x_r W_r^T (+ b): this rank's slice of the input features, then one all-reduce."""

    def __init__(self, in_features: int, out_features: int, rank: int, world_size: int,
                 all_reduce: AllReduce, name: str, bias: bool = False) -> None:
        super().__init__()
        if in_features % world_size:
            raise TensorParallelConfigError(f"in_features={in_features} does not split over {world_size} ranks")
        self.rank, self.world_size, self.all_reduce, self.name = rank, world_size, all_reduce, name
        self.weight = nn.Parameter(torch.empty(out_features, in_features // world_size), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def load_full(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight.data.copy_(reference("lab4_tensor_parallel").shard_row_parallel(weight, self.rank, self.world_size))
        if self.bias is not None:
            self.bias.data.copy_(bias)  # not split: added once, after the sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = F.linear(x, self.weight)  # (num_tokens, out_features): this rank's share of the sum
        out = self.all_reduce(partial, self.name)
        return out if self.bias is None else out + self.bias


class VocabParallelEmbedding(nn.Module):
    """Rows [start, end) of the (padded) vocabulary; other ids look up zeros, and a reduce fills them in."""

    def __init__(self, vocab_size: int, hidden_size: int, rank: int, world_size: int, all_reduce: AllReduce) -> None:
        super().__init__()
        padding = reference("lab4_tensor_parallel").VOCAB_PADDING
        padded = -(-vocab_size // padding) * padding
        if padded % world_size:
            raise TensorParallelConfigError(f"padded vocabulary {padded} does not split over {world_size} ranks")
        self.padded_vocab_size, self.per_rank, self.all_reduce = padded, padded // world_size, all_reduce
        self.start = rank * self.per_rank
        self.weight = nn.Parameter(torch.empty(self.per_rank, hidden_size), requires_grad=False)

    def load_full(self, weight: torch.Tensor) -> None:
        padded = torch.zeros(self.padded_vocab_size, weight.shape[1], dtype=weight.dtype)  # padding rows: zeros
        padded[:weight.shape[0]] = weight
        self.weight.data.copy_(padded[self.start:self.start + self.per_rank])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local_ids = input_ids - self.start
        mine = (local_ids >= 0) & (local_ids < self.per_rank)
        out = F.embedding(local_ids.clamp(0, self.per_rank - 1), self.weight) * mine.unsqueeze(-1)
        return self.all_reduce(out, "embed_tokens")  # (num_tokens, hidden_size)


class TPQwen2MLP(nn.Module):
    """SwiGLU with gate/up column-parallel and down row-parallel: one all-reduce."""

    def __init__(self, shape: ModelShape, rank: int, world_size: int, all_reduce: AllReduce, prefix: str) -> None:
        super().__init__()
        hidden, inter = shape.hidden_size, shape.intermediate_size
        self.gate_proj = ColumnParallelLinear(hidden, inter, rank, world_size)
        self.up_proj = ColumnParallelLinear(hidden, inter, rank, world_size)
        self.down_proj = RowParallelLinear(inter, hidden, rank, world_size, all_reduce, f"{prefix}.down_proj")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TPQwen2Attention(Qwen2AttentionBase):
    """q/k/v column-parallel by heads (GQA: KV heads split or replicated), o_proj row-parallel: one reduce.

    Each rank attends with only its own heads: heads never look at each other, so no
    communication is needed until o_proj mixes them. The projection, rotary and o_proj steps
    are the single-device layer's (`Qwen2AttentionBase.forward`) on this rank's heads.
    """

    def __init__(self, shape: ModelShape, rank: int, world_size: int, all_reduce: AllReduce,
                 rotary_emb: RotaryEmbedding, prefix: str) -> None:
        super().__init__()
        hidden, head_dim = shape.hidden_size, shape.head_dim
        self.head_dim = head_dim
        self.q_proj = ColumnParallelLinear(hidden, shape.num_attention_heads * head_dim, rank, world_size, True, head_dim)
        self.k_proj = ColumnParallelLinear(hidden, shape.num_key_value_heads * head_dim, rank, world_size, True, head_dim)
        self.v_proj = ColumnParallelLinear(hidden, shape.num_key_value_heads * head_dim, rank, world_size, True, head_dim)
        self.o_proj = RowParallelLinear(shape.num_attention_heads * head_dim, hidden, rank, world_size, all_reduce,
                                        f"{prefix}.o_proj")
        self.num_heads, self.num_kv_heads = len(self.q_proj.head_ids), len(self.k_proj.head_ids)
        self.rotary_emb = rotary_emb

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attn_metadata: AttentionMetadata | None) -> torch.Tensor:
        """Causal attention over one sequence (no KV cache, so no metadata); this rank's heads only."""
        out = F.scaled_dot_product_attention(query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1),
                                             is_causal=True, enable_gqa=True)  # (num_heads_local, num_tokens, head_dim)
        return out.transpose(0, 1)  # (num_tokens, num_heads_local, head_dim)


class TPQwen2DecoderLayer(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)): norms replicated, two all-reduces per block."""

    def __init__(self, shape: ModelShape, rank: int, world_size: int, all_reduce: AllReduce,
                 rotary_emb: RotaryEmbedding, prefix: str) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.self_attn = TPQwen2Attention(shape, rank, world_size, all_reduce, rotary_emb, f"{prefix}.self_attn")
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.mlp = TPQwen2MLP(shape, rank, world_size, all_reduce, f"{prefix}.mlp")

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(positions, self.input_layernorm(hidden_states))
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class TPQwen2ForCausalLM(nn.Module):
    """One rank's share of the whole model; `forward` returns full logits on every rank."""

    def __init__(self, shape: ModelShape, rank: int, world_size: int, all_reduce: AllReduce,
                 all_gather: Callable[[torch.Tensor], torch.Tensor] | None = None, max_position: int = 2048) -> None:
        super().__init__()
        if not shape.tie_word_embeddings:
            raise TensorParallelConfigError("these from-scratch layers cover tied-embedding Qwen2 models "
                                            "(tiny-phrasebook, Qwen2.5-0.5B/1.5B); vLLM splits untied ones too.")
        self.shape, self.all_gather = shape, all_gather
        self.model = nn.Module()
        self.model.embed_tokens = VocabParallelEmbedding(shape.vocab_size, shape.hidden_size, rank, world_size, all_reduce)
        rotary_emb = RotaryEmbedding(shape.head_dim, max_position, shape.rope_theta)
        self.model.layers = nn.ModuleList(
            TPQwen2DecoderLayer(shape, rank, world_size, all_reduce, rotary_emb, f"layers.{i}")
            for i in range(shape.num_hidden_layers))
        self.model.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(num_tokens,) ids of one sequence -> (num_tokens, vocab_size) float32 logits."""
        positions = torch.arange(input_ids.shape[0], device=input_ids.device)
        hidden_states = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            hidden_states = layer(positions, hidden_states)
        hidden_states = self.model.norm(hidden_states)
        local_logits = F.linear(hidden_states, self.model.embed_tokens.weight)  # (num_tokens, padded_vocab / world_size)
        return self.all_gather(local_logits)[:, :self.shape.vocab_size].float()


def load_rank_weights(model: TPQwen2ForCausalLM, model_dir: str | Path) -> None:
    """Fill every parameter with this rank's share of the checkpoint (names as in the safetensors file).

    vLLM's `weight_loader`s do the same per parameter (`narrow` on the loaded tensor).
    """
    modules = dict(model.named_modules())
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                module_name, _, kind = name.rpartition(".")
                module = modules.get(module_name)
                if module is None or (kind == "bias" and hasattr(module, "load_full")):
                    continue  # not ours (a tied lm_head), or a bias loaded with its weight below
                tensor = f.get_tensor(name)
                if isinstance(module, VocabParallelEmbedding):
                    module.load_full(tensor)
                elif hasattr(module, "load_full"):
                    bias_name = f"{module_name}.bias"
                    module.load_full(tensor, f.get_tensor(bias_name) if bias_name in f.keys() else None)
                else:  # replicated (RMSNorm): every rank keeps the whole tensor
                    getattr(module, kind).data.copy_(tensor)


def build_rank_model(model_dir: str | Path | None, rank: int, world_size: int, all_reduce: AllReduce,
                     all_gather: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
                     shape: ModelShape | None = None, dtype: torch.dtype = torch.float32,
                     device: str = "cpu") -> TPQwen2ForCausalLM:
    """Rank `rank`'s share of the model in `model_dir` (or, with `shape` and device="meta", shapes only)."""
    shape = shape or ModelShape.from_model_dir(model_dir)
    with torch.device(device):
        model = TPQwen2ForCausalLM(shape, rank, world_size, all_reduce, all_gather)
    if device != "meta":
        load_rank_weights(model, model_dir)
    return model.to(dtype=dtype).eval()
