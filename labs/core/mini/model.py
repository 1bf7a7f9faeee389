"""Qwen2ForCausalLM in plain PyTorch (and plain Llama, which is Qwen2 without q/k/v biases),
reading the checkpoint Hugging Face and vLLM read.

Module and parameter names are those of the safetensors file (`model.layers.0.self_attn.q_proj.weight`
...), so loading is a plain `load_state_dict`. Like vLLM's model code (and unlike transformers')
the batch is flat: `(num_tokens, hidden_size)`, tokens of all requests one after another, with
their positions passed alongside; only attention needs to know which token belongs to whom.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from labs.core.mini.attention import AttentionMetadata, PagedAttention
from labs.core.mini.config import ModelShape


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 as Qwen2 was trained (bf16 loses the small variance)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_fp32 = x.float()
        x_fp32 = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x_fp32.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotates each query/key by an angle proportional to its position (RoPE, "neox" halves layout).

    cos/sin for every position up to max_position are computed once; a step looks its tokens'
    positions up, which is what lets tokens of different requests at different positions share
    one batch.
    """

    def __init__(self, head_dim: int, max_position: int, rope_theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)  # (max_position, head_dim / 2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x: (num_tokens, num_heads, head_dim) -> the same, rotated; positions: (num_tokens,)."""
        cos = self.cos[positions].unsqueeze(1)  # (num_tokens, 1, head_dim / 2)
        sin = self.sin[positions].unsqueeze(1)
        x1, x2 = x.chunk(2, dim=-1)  # neox layout: the pairs are (i, i + head_dim/2), not (2i, 2i+1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Qwen2AttentionBase(nn.Module):
    """The attention block's math, shared by the single-device layer and the tensor-parallel one.

    project q/k/v -> split into heads -> rotate q and k -> attend within each head -> o_proj.
    Subclasses own the parts that differ: which Linear layers hold the projections (whole here,
    one rank's heads in `labs.lab4_tensor_parallel.layers`, whose o_proj ends with the all-reduce)
    and how heads attend (`attend`: the paged KV cache here, plain causal attention there).

    Subclasses set: q_proj, k_proj, v_proj, o_proj (modules), rotary_emb, and num_heads,
    num_kv_heads, head_dim (the heads THIS module computes: a rank's share under TP).
    """

    q_proj: nn.Module
    k_proj: nn.Module
    v_proj: nn.Module
    o_proj: nn.Module
    rotary_emb: RotaryEmbedding
    num_heads: int
    num_kv_heads: int
    head_dim: int

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attn_metadata: AttentionMetadata | None) -> torch.Tensor:
        """Attention within each head.

        Args:
            query: (num_tokens, num_heads, head_dim), rotated.
            key, value: (num_tokens, num_kv_heads, head_dim), key rotated.
            attn_metadata: which token belongs to which request (None where the subclass needs none).

        Returns:
            (num_tokens, num_heads, head_dim)
        """
        raise NotImplementedError

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor,
                attn_metadata: AttentionMetadata | None = None) -> torch.Tensor:
        """Args:
            positions: (num_tokens,) each token's position in its own request.
            hidden_states: (num_tokens, hidden_size).
            attn_metadata: passed on to `attend`.

        Returns:
            (num_tokens, hidden_size)
        """
        num_tokens = hidden_states.shape[0]
        query = self.q_proj(hidden_states).view(num_tokens, self.num_heads, self.head_dim)
        key = self.k_proj(hidden_states).view(num_tokens, self.num_kv_heads, self.head_dim)
        value = self.v_proj(hidden_states).view(num_tokens, self.num_kv_heads, self.head_dim)
        query, key = self.rotary_emb(positions, query), self.rotary_emb(positions, key)
        out = self.attend(query, key, value, attn_metadata)  # (num_tokens, num_heads, head_dim)
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))


class Qwen2Attention(Qwen2AttentionBase):
    """Every head on one device, K/V kept in the paged cache (`PagedAttention`)."""

    def __init__(self, shape: ModelShape, rotary_emb: RotaryEmbedding) -> None:
        super().__init__()
        self.num_heads = shape.num_attention_heads
        self.num_kv_heads = shape.num_key_value_heads
        self.head_dim = shape.head_dim
        # Qwen2 has biases on q/k/v (not on o): part of the checkpoint, easy to forget. Llama has none.
        bias = shape.attention_bias
        self.q_proj = nn.Linear(shape.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(shape.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(shape.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, shape.hidden_size, bias=False)
        self.rotary_emb = rotary_emb  # shared by all layers (same positions, same frequencies)
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attn_metadata: AttentionMetadata | None) -> torch.Tensor:
        """Paged attention: writes this step's K/V into the cache and reads each request's own."""
        return self.attn(query, key, value, attn_metadata)  # (num_tokens, num_heads, head_dim)


class Qwen2MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(shape.hidden_size, shape.intermediate_size, bias=False)
        self.up_proj = nn.Linear(shape.hidden_size, shape.intermediate_size, bias=False)
        self.down_proj = nn.Linear(shape.intermediate_size, shape.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, shape: ModelShape, rotary_emb: RotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.self_attn = Qwen2Attention(shape, rotary_emb)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.mlp = Qwen2MLP(shape)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor,
                attn_metadata: AttentionMetadata) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(positions, self.input_layernorm(hidden_states), attn_metadata)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class Qwen2Model(nn.Module):
    def __init__(self, shape: ModelShape, max_position: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden_size)
        rotary_emb = RotaryEmbedding(shape.head_dim, max_position, shape.rope_theta)
        self.layers = nn.ModuleList(Qwen2DecoderLayer(shape, rotary_emb) for _ in range(shape.num_hidden_layers))
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                attn_metadata: AttentionMetadata) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids)  # (num_tokens, hidden_size)
        for layer in self.layers:
            hidden_states = layer(positions, hidden_states, attn_metadata)
        return self.norm(hidden_states)


class Qwen2ForCausalLM(nn.Module):
    """The decoder plus the head that turns a hidden state into next-token logits."""

    def __init__(self, shape: ModelShape, max_position: int) -> None:
        super().__init__()
        self.shape = shape
        self.model = Qwen2Model(shape, max_position)
        # Small Qwen2 models reuse the embedding matrix as the output head (tie_word_embeddings):
        # the checkpoint then has no lm_head.weight at all.
        self.lm_head = None if shape.tie_word_embeddings else nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                attn_metadata: AttentionMetadata) -> torch.Tensor:
        """Args:
            input_ids: (num_tokens,) the step's new tokens, all requests one after another.
            positions: (num_tokens,) each token's position in its own request.
            attn_metadata: which token belongs to which request, and where their K/V live.

        Returns:
            (num_tokens, hidden_size) final hidden states; `compute_logits` on the rows to sample.
        """
        return self.model(input_ids, positions, attn_metadata)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(num_rows, hidden_size) -> (num_rows, vocab_size) float32 logits.

        Separate from forward because only the last token of each request needs logits: the
        vocab projection of every prompt token would be the single largest matmul of a prefill.
        """
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden_states, weight).float()

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, shape: ModelShape, max_position: int,
                        dtype: torch.dtype, device: str | torch.device) -> Qwen2ForCausalLM:
        """Build the model and load every `*.safetensors` file of `model_dir` into it (strictly)."""
        with torch.device(device):
            model = cls(shape, max_position)
        state_dict: dict[str, torch.Tensor] = {}
        for path in sorted(Path(model_dir).glob("*.safetensors")):
            state_dict.update(load_file(path, device=str(device)))
        if shape.tie_word_embeddings:
            state_dict.pop("lm_head.weight", None)  # some tied checkpoints still store a copy
        model.load_state_dict(state_dict, strict=True)
        # Inference only: no autograd bookkeeping. RoPE tables are cast too, as transformers does.
        return model.to(dtype=dtype).requires_grad_(False).eval()
