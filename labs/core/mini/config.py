"""Every knob of the mini engine in one dataclass, each default with the reason it was chosen.

The model's shape is not a knob: it is read from the model folder's `config.json`, the same file
vLLM and Hugging Face transformers read, so the three always build the same network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class ModelShape:
    """The parts of a Qwen2 or Llama `config.json` the mini model needs (names as in the file).

    Why both: a plain Llama decoder is Qwen2 without the q/k/v biases (same RMSNorm, neox-layout
    RoPE, SwiGLU MLP, grouped-query attention), so one implementation runs both. What it does not
    implement (RoPE scaling such as Llama 3's, MLP biases) is refused, never silently mis-computed.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    eos_token_id: int | None
    dtype: str  # what the checkpoint's weights were saved in ("bfloat16", ...)
    attention_bias: bool = True  # q/k/v biases: always in Qwen2, never in the Llama models the mini engine runs

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> ModelShape:
        hf = json.loads((Path(model_dir) / "config.json").read_text())
        unsupported = unsupported_reason(hf)
        if unsupported:
            raise ValueError(f"{model_dir}: {unsupported}")
        # transformers >= 5 nests rope_theta in rope_parameters; older configs keep it at the top.
        rope_theta = (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10000.0))
        eos = hf.get("eos_token_id")
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=hf["num_attention_heads"],
            num_key_value_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
            head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
            rms_norm_eps=hf["rms_norm_eps"],
            rope_theta=float(rope_theta),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            dtype=hf.get("dtype") or hf.get("torch_dtype") or "float32",  # "dtype" since transformers 5
            attention_bias=hf["model_type"] == "qwen2",  # a Llama with biases is refused above
        )


SUPPORTED_MODEL_TYPES = ("qwen2", "llama")


def unsupported_reason(hf_config: dict) -> str | None:
    """Why the mini engine cannot run a model with this `config.json`, or None when it can.

    Args:
        hf_config: the parsed config.json.

    Returns:
        One sentence naming what is missing, for labs to print instead of failing.
    """
    model_type = hf_config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"the mini engine runs Qwen2 and Llama models only; this one is {model_type!r}"
    rope = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type != "default":
        return f"the mini engine implements plain RoPE only; this model uses {rope_type!r} RoPE scaling"
    if hf_config.get("mlp_bias") or (model_type == "llama" and hf_config.get("attention_bias")):
        return "the mini engine has no MLP or o_proj biases; this model has them"
    if hf_config.get("hidden_act", "silu") != "silu":
        return f"the mini engine's MLP is SwiGLU (silu); this model uses {hf_config.get('hidden_act')!r}"
    return None


def mini_engine_unsupported_reason(model_dir: str | Path) -> str | None:
    """`unsupported_reason` for a model folder (labs call it before building a mini engine).

    Args:
        model_dir: the model's folder, or a hub id when the model is not on disk.

    Returns:
        One sentence, or None when the mini engine can run the model.
    """
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        return f"the mini engine reads a local model folder, and {model_dir} is not one (vLLM would download it)"
    return unsupported_reason(json.loads(config_path.read_text()))


def default_device() -> str:
    """CUDA when there is a GPU, else the CPU: the same code runs on both, nothing hard-coded."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Config:
    """How the mini engine runs one model.

    Attributes (defaults and why):
        model: path to a Hugging Face model folder (config.json, *.safetensors, tokenizer files).
        block_size: 32 tokens per KV block: what the workbook gives vLLM on the CPU (its CPU
            attention needs a multiple of 32), so block tables of the two engines compare 1:1.
        max_num_seqs: 256 running requests at most: vLLM's default for `LLM` on CPU.
        max_num_batched_tokens: 4096 tokens per step at most (vLLM's `LLM` default on CPU): long
            prompts are then prefilled in chunks, interleaved with other requests' decodes.
        max_model_len: 2048 tokens of prompt + output per request: what the workbook gives vLLM.
        kv_cache_memory_gib: 1 GiB of KV cache: what the workbook gives vLLM on the CPU
            (VLLM_CPU_KVCACHE_SPACE=1), so both engines hold a similar number of tokens.
        num_kv_blocks: overrides the memory budget with an exact number of blocks (like vLLM's
            `num_gpu_blocks_override`, and like it counting the reserved null block); small
            numbers make preemption easy to watch.
        enable_prefix_caching: reuse full KV blocks of an earlier identical prefix (vLLM's default).
        dtype: "auto" computes in the checkpoint's dtype, as vLLM does on CPU and GPU (bf16 for
            the workbook's models: half the memory, and fast on GPUs and on CPUs with AMX or
            AVX512-BF16); or name one ("float32" is slower but closest to an fp32 reference).
        device: "cuda" when a GPU is visible, else "cpu".
        tensor_parallel_size: 1, or N to split every MLP over N ranks simulated as threads with
            Lab 4's shard functions and one all-reduce each (`labs/core/mini/tensor_parallel.py`):
            the same tokens as one rank, which is what Lab 4's "your engine" setting checks.
        num_cpu_threads: 1 torch thread on the CPU, as vLLM sets for serving: a small model's ops
            are too short to gain from OpenMP, whose spin-waiting workers steal the cores from
            the step's Python code (10x slower here when other processes share the cores).
            None leaves torch's setting alone. Note: torch's thread count is process-wide.
        shape: read from `model`/config.json when the config is built.
    """

    model: str
    block_size: int = 32
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 4096
    max_model_len: int = 2048
    kv_cache_memory_gib: float = 1.0
    num_kv_blocks: int | None = None
    enable_prefix_caching: bool = True
    dtype: str = "auto"
    device: str = field(default_factory=default_device)
    tensor_parallel_size: int = 1
    num_cpu_threads: int | None = 1
    shape: ModelShape = field(init=False)

    def __post_init__(self) -> None:
        self.shape = ModelShape.from_model_dir(self.model)
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs: every running request may need "
                             "a token per step")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.shape.dtype if self.dtype == "auto" else self.dtype)

    def kv_cache_bytes_per_block(self) -> int:
        """Key + value of `block_size` tokens in every layer (Lab 1's kv_cache_bytes_per_token x block_size)."""
        s = self.shape
        element_size = torch.empty((), dtype=self.torch_dtype).element_size()
        return 2 * s.num_hidden_layers * self.block_size * s.num_key_value_heads * s.head_dim * element_size

    def get_num_kv_blocks(self) -> int:
        """Blocks in the KV cache, the reserved null block included (vLLM's `num_gpu_blocks`)."""
        if self.num_kv_blocks is not None:
            return self.num_kv_blocks
        return int(self.kv_cache_memory_gib * 2**30) // self.kv_cache_bytes_per_block()
