"""Lab 1's predict-then-see questions: the real values, read from the live engine.

Each function runs the engine (or reads its allocated KV cache) and returns what the learner's
guess is checked against with `labs.core.predict.check_number`; the notebook cell before it
holds the guess (`my_prediction = None` when none was made).

    chat_template_cost   how many prompt tokens the chat template adds to the messages' own text
    tokens_until_eos     how many tokens greedy decoding produces before it stops (EOS included)
    kv_bytes_per_token   how many bytes of KV cache one token takes, from the allocated tensors
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labs.core import vllm_internals as vi


@dataclass(frozen=True)
class ChatTemplateCost:
    """What `llm.chat` fed the model against what the messages' text alone tokenizes to."""

    num_prompt_tokens: int  # from the engine's RequestOutput.prompt_token_ids
    num_content_tokens: int  # each message's content tokenized alone, summed
    prompt_text: str  # the chat template's rendering of the messages

    @property
    def num_added_tokens(self) -> int:
        """Role markers, separators and the generation prompt the template wraps around the text."""
        return self.num_prompt_tokens - self.num_content_tokens


def chat_template_cost(llm: Any, messages: list[dict[str, str]]) -> ChatTemplateCost:
    """Send `messages` through `llm.chat` (1 output token) and count the prompt tokens the engine saw.

    Args:
        llm: a `vllm.LLM`.
        messages: chat messages ({"role": ..., "content": ...}).

    Returns:
        The engine's prompt token count next to the messages' own token count.
    """
    from vllm import SamplingParams

    (out,) = llm.chat([messages], SamplingParams(max_tokens=1, temperature=0.0), use_tqdm=False)
    tokenizer = llm.get_tokenizer()
    content = sum(len(tokenizer(m["content"], add_special_tokens=False)["input_ids"]) for m in messages)
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return ChatTemplateCost(len(out.prompt_token_ids), content, prompt_text)


@dataclass(frozen=True)
class EosRun:
    """One greedy generation, as the engine returned it."""

    num_output_tokens: int  # len(CompletionOutput.token_ids): the EOS token is one of them
    finish_reason: str  # "stop": the model chose EOS; "length": max_tokens ran out first
    max_tokens: int
    text: str
    ends_with_eos: bool  # the last output token is one of the model's EOS ids


def tokens_until_eos(llm: Any, messages: list[dict[str, str]], max_tokens: int = 64) -> EosRun:
    """Greedy `llm.chat` on `messages`: how many tokens until the model stops, and why it stopped.

    Args:
        llm: a `vllm.LLM`.
        messages: chat messages.
        max_tokens: the cap; a model that never picks EOS stops here (finish_reason "length").
    """
    from vllm import SamplingParams

    (out,) = llm.chat([messages], SamplingParams(max_tokens=max_tokens, temperature=0.0), use_tqdm=False)
    completion = out.outputs[0]
    token_ids = list(completion.token_ids)
    eos_ids = _eos_token_ids(llm)
    return EosRun(len(token_ids), str(completion.finish_reason), max_tokens, completion.text,
                  bool(token_ids) and token_ids[-1] in eos_ids)


def _eos_token_ids(llm: Any) -> set[int]:
    tokenizer = llm.get_tokenizer()
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    generation_config = llm.llm_engine.model_config.try_get_generation_config() or {}
    extra = generation_config.get("eos_token_id")
    ids |= set(extra) if isinstance(extra, (list, tuple)) else {extra} if extra is not None else set()
    return ids


@dataclass(frozen=True)
class KvBytes:
    """KV cache bytes per token: what the allocated tensors hold, and the model shape behind it."""

    bytes_per_token: int  # all layers' KV cache tensors' bytes / (blocks x block_size)
    spec_bytes_per_token: int  # vLLM's own figure, from its KV cache spec (must agree)
    num_layers: int  # attention layers holding a KV cache tensor
    num_kv_heads: int
    head_size: int
    element_bytes: int  # bytes of one cached number (the KV cache dtype)
    dtype: str

    def formula(self) -> str:
        return (f"2 (K and V) x {self.num_layers} layers x {self.num_kv_heads} KV heads x {self.head_size} "
                f"head size x {self.element_bytes} bytes ({self.dtype})")


def kv_bytes_per_token(llm: Any) -> KvBytes:
    """Bytes of KV cache per token, measured on the tensors the model runner allocated.

    Why the tensors: they are the memory the engine really holds; dividing their bytes by the
    number of token slots (every block, the null block included, times the block size) gives
    the cost of one token whatever the tensor layout of the attention backend.
    """
    tensors = vi.kv_cache_tensors(llm)
    snap = vi.kv_cache_snapshot(llm)
    num_slots = (snap.num_blocks + 1) * snap.block_size  # + vLLM's null block, allocated like the others
    model_config = llm.llm_engine.model_config
    return KvBytes(
        bytes_per_token=sum(t.numel() * t.element_size() for t in tensors) // num_slots,
        spec_bytes_per_token=vi.kv_cache_bytes_per_token(llm),
        num_layers=len(tensors),
        num_kv_heads=model_config.get_total_num_kv_heads(),
        head_size=model_config.get_head_size(),
        element_bytes=tensors[0].element_size(),
        dtype=str(tensors[0].dtype).removeprefix("torch."),
    )
