"""Multi-LoRA inside vLLM 0.32.0: adapter slots, each step's request -> adapter mapping, slot memory.

Why a module of its own: Lab 9 shows which requests of a batch ran with which adapter, and what an
adapter slot costs, by reading objects that are not vLLM's public API. The chain, in 0.32.0:

- `model_runner.lora_manager` (vllm/v1/worker/lora_model_runner_mixin.py, `load_lora_model`) is an
  `LRUCacheWorkerLoRAManager` (vllm/lora/worker_manager.py); its `_adapter_manager` is the
  `LRUCacheLoRAModelManager` (vllm/lora/model_manager.py) that owns `lora_index_to_id` (slot ->
  adapter id; `max_loras` slots), `modules` (every LoRA-wrapped layer, with `lora_a_stacked` /
  `lora_b_stacked` preallocated for every slot at `max_lora_rank`) and the punica wrapper.
- Each step, the model runner calls `set_active_loras(input_batch, num_scheduled_tokens, ...)`,
  which turns `input_batch.request_lora_mapping` (request row -> adapter id, 0 = none) into a
  `LoRAMapping` per token (`InputBatch.make_lora_inputs`), loads missing adapters into free slots
  and hands the punica wrapper its per-token slot indices (`PunicaWrapperBase.update_metadata`).
- On CPU the LoRA matmuls are `PunicaWrapperCPU` (vllm/lora/punica_wrapper/punica_cpu.py) over the
  torch ops in vllm/lora/ops/torch_ops/lora_ops.py (`bgmv_shrink` / `bgmv_expand`: gather each
  token's A and B by its slot, then einsum).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from labs.core.vllm_internals.live_engine import model_runner


def lora_model_manager(llm: Any) -> Any:
    """The engine's `LRUCacheLoRAModelManager` (needs `enable_lora=True` and an in-process engine)."""
    runner = model_runner(llm)
    if not getattr(runner, "lora_config", None):
        raise ValueError("this engine was started without enable_lora=True: it has no adapter slots")
    return runner.lora_manager._adapter_manager


def adapter_slots(llm: Any) -> list[int | None]:
    """Slot index -> the adapter id loaded there (None: free); `max_loras` entries."""
    return list(lora_model_manager(llm).lora_index_to_id)


def registered_adapter_ids(llm: Any) -> list[int]:
    """Adapter ids held in the CPU cache (`max_cpu_loras`): loaded from disk, not necessarily in a slot."""
    return sorted(lora_model_manager(llm).list_adapters())


def lora_module_shapes(llm: Any) -> dict[str, dict[str, Any]]:
    """Every LoRA-wrapped layer's preallocated A and B tensors.

    A packed layer (qkv_proj, gate_up_proj) has one A/B pair per slice (q, k, v / gate, up). Shapes
    are (max_loras, 1, max_lora_rank, in) for A and (max_loras, 1, out, max_lora_rank) for B.

    Returns:
        {module name: {"a": [A shape per slice], "b": [B shape per slice], "bytes": all its A/B
        bytes (every slot), "slots": max_loras}}.
    """
    shapes = {}
    for name, module in lora_model_manager(llm).modules.items():
        a = getattr(module, "lora_a_stacked", ())
        b = getattr(module, "lora_b_stacked", ())
        a, b = (a if isinstance(a, (tuple, list)) else (a,)), (b if isinstance(b, (tuple, list)) else (b,))
        shapes[name] = {"a": [tuple(t.shape) for t in a], "b": [tuple(t.shape) for t in b],
                        "bytes": sum(t.numel() * t.element_size() for t in (*a, *b)),
                        "slots": a[0].shape[0] if a else 0}
    return shapes


def bytes_per_slot(llm: Any) -> int:
    """Bytes of A/B memory vLLM allocated for ONE adapter slot, summed over every LoRA-wrapped layer.

    It is allocated at engine start for `max_loras` slots at `max_lora_rank`, whatever rank the
    adapters loaded later have: a rank-8 adapter in a rank-16 engine uses half its slot.
    """
    shapes = lora_module_shapes(llm)
    return sum(s["bytes"] // s["slots"] for s in shapes.values() if s["slots"])


@dataclass
class LoraBatch:
    """One engine step's LoRA view, as the model runner set it up.

    Attributes:
        req_ids: the requests of the step, in input-batch row order.
        lora_ids: per request, its adapter id (0: no adapter).
        num_tokens: per request, tokens scheduled this step (prompt chunk or 1 decode token).
        slots: slot -> adapter id after the step's adapters were activated.
        token_slots: per scheduled token, the slot its LoRA rows are read from (-1: none).
    """

    req_ids: list[str]
    lora_ids: list[int]
    num_tokens: list[int]
    slots: list[int | None]
    token_slots: list[int] = field(default_factory=list)


@contextmanager
def record_lora_batches(llm: Any) -> Iterator[list[LoraBatch]]:
    """Record every step's `LoraBatch` while the block runs; the model runner is restored afterwards.

    Wraps the instance's `set_active_loras` (vllm/v1/worker/lora_model_runner_mixin.py), which the
    model runner calls once per step with the input batch it is about to run.
    """
    runner = model_runner(llm)
    manager = lora_model_manager(llm)
    original = runner.set_active_loras
    batches: list[LoraBatch] = []

    def recording(input_batch: Any, num_scheduled_tokens: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(input_batch, num_scheduled_tokens, *args, **kwargs)
        num_reqs = input_batch.num_reqs
        # the language model's wrapper (a text-only model has no other): each token's slot, -1 for none
        wrapper = next(iter(getattr(manager, "punica_wrapper_mapping", {}).values()), None)
        token_slots = wrapper.token_lora_indices.tolist() if wrapper is not None else []
        batches.append(LoraBatch(
            req_ids=list(input_batch.req_ids[:num_reqs]),
            lora_ids=[int(i) for i in input_batch.request_lora_mapping[:num_reqs]],
            num_tokens=[int(n) for n in num_scheduled_tokens[:num_reqs]],
            slots=list(manager.lora_index_to_id), token_slots=[int(s) for s in token_slots]))
        return result

    runner.set_active_loras = recording
    try:
        yield batches
    finally:
        del runner.set_active_loras  # the class's method is visible again


def lora_request(name: str, lora_id: int, path: str) -> Any:
    """A `vllm.lora.request.LoRARequest`: the adapter a request runs with.

    `lora_id` (>= 1) is the adapter's identity inside the engine: slots, caches and the per-token
    mapping all use it, never the name; one id must always mean the same path.
    """
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=str(path))


def peft_rank_and_scaling(adapter_config: dict, module_name: str) -> tuple[int, float]:
    """(rank, scaling) vLLM uses for `module_name` of an adapter with this adapter_config.json.

    vLLM's own rule (`PEFTHelper.get_rank_and_scaling`, vllm/lora/peft_helper.py): `rank_pattern` /
    `alpha_pattern` override r / lora_alpha per module, and scaling is alpha / r, or alpha / sqrt(r)
    with `use_rslora`.
    """
    from vllm.lora.peft_helper import PEFTHelper

    return PEFTHelper.from_dict(dict(adapter_config)).get_rank_and_scaling(module_name)


def punica_lora_linear(x: Any, weight: Any, lora_a: Any, lora_b: Any, token_lora_ids: list[int],
                       slot_ids: list[int | None], is_prefill: bool = False) -> Any:
    """y = x W^T + the LoRA term of each token's adapter, computed by vLLM's CPU punica wrapper.

    Args:
        x: (num_tokens, in) activations.
        weight: (out, in) base weight W.
        lora_a: (num_slots, r, in) each slot's A; lora_b: (num_slots, out, r) each slot's B with the
            adapter's scaling already folded in (vLLM's `LoRALayerWeights.optimize` does that at load).
        token_lora_ids: per token, its adapter id (0: none).
        slot_ids: slot -> adapter id, as `lora_index_to_id`.
        is_prefill: use the prefill (sgmv) path instead of the decode (bgmv) path.

    Returns:
        (num_tokens, out) output, in x's dtype.
    """
    from vllm.lora.layers.utils import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    num_tokens = x.shape[0]
    wrapper = PunicaWrapperCPU(max_num_batched_tokens=max(num_tokens, 1), max_batches=max(num_tokens, 1), device="cpu")
    mapping = LoRAMapping(tuple(token_lora_ids), tuple(token_lora_ids), is_prefill=is_prefill)
    wrapper.update_metadata(mapping, list(slot_ids), len(slot_ids) + 1, vocab_size=1)
    y = x @ weight.T  # (num_tokens, out)
    wrapper.add_lora_linear(y, x, (lora_a.unsqueeze(1),), (lora_b.unsqueeze(1),), 1.0, (weight.shape[0],))
    return y
