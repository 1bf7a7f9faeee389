"""vLLM's own KVCacheManager, Scheduler and sampler masks built standalone: no engine, no model.

Why: these parts are pure bookkeeping (or a pure function), so a test or notebook can drive
the real vLLM classes call by call without loading a model. That is how the labs grade a
learner's code: Lab 2's block manager against vLLM's `KVCacheManager`, Lab 3's scheduler
against vLLM's `Scheduler`, a sampler's top-k/top-p filter against vLLM's own masking.
vLLM is the answer key, so nothing in a grader hard-codes a block id or a schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labs.core.vllm_internals.version import check_vllm_version

# --- vLLM's KV cache manager on its own (Lab 2's grader) --------------------------------------


def make_kv_cache_manager(num_blocks: int, block_size: int, enable_caching: bool = True,
                          max_model_len: int = 8192) -> Any:
    """vLLM's real `KVCacheManager` for one group of full-attention layers, built standalone.

    Why: the manager is pure bookkeeping (no tensors), so it can be driven call by call in a
    test or notebook without loading a model, which is how Lab 2 grades a learner's block
    manager against the real one. The layer shape in the spec only sizes pages; it changes no
    block decision.

    Args:
        num_blocks: blocks in the pool, including the null block 0 (like `num_gpu_blocks`).
        block_size: tokens per block (also the prefix-cache hash granularity).
        enable_caching: automatic prefix caching on/off.
        max_model_len: longest request; allocation is capped at it.

    Returns:
        A `vllm.v1.core.kv_cache_manager.KVCacheManager`; pair it with `make_vllm_request`.
    """
    check_vllm_version()
    import torch
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    from vllm.v1.core.kv_cache_utils import init_none_hash
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec

    init_none_hash(sha256)  # the engine does this at start-up; sha256 gives a fixed seed
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=2, head_size=64, dtype=torch.bfloat16)
    config = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[],
                           kv_cache_groups=[KVCacheGroupSpec(["model.layers.0.self_attn.attn"], spec)])
    return KVCacheManager(config, max_model_len=max_model_len, scheduler_block_size=block_size,
                          hash_block_size=block_size, enable_caching=enable_caching)


def make_vllm_request(request_id: str, prompt_token_ids: list[int], block_size: int,
                      max_tokens: int = 16) -> Any:
    """A `vllm.v1.request.Request` from token ids, hashing its full blocks as the engine does.

    Why the block hasher: vLLM's Request computes its `block_hashes` itself (at creation and in
    `append_output_token_ids`); without one, prefix caching never hits. Append decode tokens
    with `request.append_output_token_ids(token_id)`.

    Args:
        request_id: the id the KV cache manager will know it by.
        prompt_token_ids: the prompt.
        block_size: must equal the manager's block size.
        max_tokens: SamplingParams.max_tokens (the manager does not read it).
    """
    check_vllm_version()
    from vllm import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.request import Request

    init_none_hash(sha256)  # hashes are computed right here, so NONE_HASH must be set already
    return Request(request_id, list(prompt_token_ids), SamplingParams(max_tokens=max_tokens), None,
                   block_hasher=get_request_block_hasher(block_size, sha256))


def free_queue_block_ids(kv_cache_manager: Any) -> list[int]:
    """All free block ids of a KVCacheManager in eviction order: the head is handed out next."""
    return [b.block_id for b in kv_cache_manager.block_pool.free_block_queue.get_all_free_blocks()]


# --- vLLM's Scheduler on its own (Lab 3's grader) ---------------------------------------------


@dataclass(frozen=True)
class ScheduledStep:
    """What vLLM's Scheduler decided in one `schedule()` call, as plain Python values."""

    num_scheduled_tokens: dict[str, int]  # request_id -> tokens, in schedule order
    scheduled_new_req_ids: list[str]  # admitted from the waiting queue: new, or resumed after preemption
    preempted_req_ids: set[str]  # vLLM keeps a set: the order is not recorded


class StandaloneScheduler:
    """vLLM's real v1 `Scheduler` (and its real `KVCacheManager`) with no model behind it.

    Why: the scheduler only does bookkeeping, so a test can play the model runner, feed it
    made-up sampled tokens, and watch every decision, which is how Lab 3 grades a learner's
    scheduler step by step. It is built as vLLM's own tests build one (tests/v1/core/utils.py
    `create_scheduler`): a `VllmConfig` from Model/Scheduler/CacheConfig plus a `KVCacheConfig`
    with one group of full-attention layers and no tensors. The model folder is only read for
    its config.json. Always the synchronous `Scheduler` with FCFS and prefix-cache hashing as
    the engine sets it up (EngineCore.__init__).
    """

    def __init__(self, model_path: str, *, block_size: int, num_blocks: int, max_num_seqs: int,
                 max_num_batched_tokens: int, long_prefill_token_threshold: int = 0,
                 enable_prefix_caching: bool = True, max_model_len: int = 1024) -> None:
        """Args:
            model_path: a local model folder (e.g. models/tiny-random).
            block_size: tokens per KV block.
            num_blocks: blocks in the pool, including the null block 0 (like `num_gpu_blocks`).
            max_num_seqs, max_num_batched_tokens, long_prefill_token_threshold: SchedulerConfig's.
            enable_prefix_caching: automatic prefix caching on/off.
            max_model_len: longest request (prompt + output).
        """
        check_vllm_version()
        import torch
        from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
        from vllm.v1.core.sched.scheduler import Scheduler
        from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
        from vllm.v1.structured_output import StructuredOutputManager

        model_config = ModelConfig(model=str(model_path), max_model_len=max_model_len, skip_tokenizer_init=True)
        scheduler_config = SchedulerConfig(
            max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
            long_prefill_token_threshold=long_prefill_token_threshold, enable_chunked_prefill=True,
            max_model_len=max_model_len, is_encoder_decoder=False)
        cache_config = CacheConfig(block_size=block_size, enable_prefix_caching=enable_prefix_caching)
        vllm_config = VllmConfig(model_config=model_config, scheduler_config=scheduler_config,
                                 cache_config=cache_config)
        vllm_config.cache_config.num_gpu_blocks = num_blocks  # the engine sets it after profiling memory
        spec = FullAttentionSpec(block_size=block_size, num_kv_heads=2, head_size=64, dtype=torch.bfloat16)
        kv_cache_config = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[],
                                        kv_cache_groups=[KVCacheGroupSpec(["model.layers.0.self_attn.attn"], spec)])
        self.block_size = block_size
        self.scheduler = Scheduler(vllm_config=vllm_config, kv_cache_config=kv_cache_config,
                                   structured_output_manager=StructuredOutputManager(vllm_config),
                                   block_size=block_size)
        self._last_output: Any = None

    def add_request(self, request_id: str, prompt_token_ids: list[int], max_tokens: int,
                    eos_token_id: int | None = None) -> None:
        """Queue a request; it stops at `max_tokens` outputs or on sampling `eos_token_id`."""
        request = make_vllm_request(request_id, prompt_token_ids, self.block_size, max_tokens=max_tokens)
        # What the engine's input processor does with the tokenizer's EOS (vllm/v1/engine/input_processor.py).
        request.sampling_params.update_from_generation_config({}, eos_token_id)
        self.scheduler.add_request(request)

    def schedule(self) -> ScheduledStep:
        """One `Scheduler.schedule()`. It already moves `num_computed_tokens` forward.

        "Admitted" joins two lists of vLLM's SchedulerOutput: `scheduled_new_reqs` and the
        `resumed_req_ids` of `scheduled_cached_reqs` (the V2 model runner puts both in the first).
        """
        output = self._last_output = self.scheduler.schedule()
        admitted = {new_req.req_id for new_req in output.scheduled_new_reqs}
        admitted |= set(output.scheduled_cached_reqs.resumed_req_ids)
        return ScheduledStep(dict(output.num_scheduled_tokens),
                             [rid for rid in output.num_scheduled_tokens if rid in admitted],
                             set(output.preempted_req_ids))

    def update_from_output(self, sampled_token_ids: dict[str, list[int]]) -> dict[str, str]:
        """Play the model runner for the last `schedule()`: report one sampled token per request.

        Like vLLM's model runner, drops the token of a request whose prompt is not fully
        computed yet (a partial prefill chunk samples nothing meaningful).

        Args:
            sampled_token_ids: request_id -> sampled tokens, for (at least) every scheduled request.

        Returns:
            request_id -> finish reason ("stop": sampled EOS, "length": max_tokens) of the
            requests that finished, in the order vLLM reported them.
        """
        from vllm.v1.outputs import ModelRunnerOutput

        req_ids = list(self._last_output.num_scheduled_tokens)
        requests = self.scheduler.requests
        sampled = [list(sampled_token_ids[rid]) if requests[rid].num_computed_tokens >= requests[rid].num_tokens
                   else [] for rid in req_ids]
        runner_output = ModelRunnerOutput(req_ids=req_ids, req_id_to_index={rid: i for i, rid in enumerate(req_ids)},
                                          sampled_token_ids=sampled)
        engine_core_outputs = self.scheduler.update_from_output(self._last_output, runner_output)
        return {out.request_id: str(out.finish_reason) for outs in engine_core_outputs.values()
                for out in outs.outputs if out.finish_reason is not None}

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.get_num_unfinished_requests() > 0

    @property
    def running_req_ids(self) -> list[str]:
        return [request.request_id for request in self.scheduler.running]

    @property
    def waiting_req_ids(self) -> list[str]:
        return [request.request_id for request in self.scheduler.waiting]

    def num_computed_tokens(self, request_id: str) -> int:
        return self.scheduler.requests[request_id].num_computed_tokens

    def output_token_ids(self, request_id: str) -> list[int]:
        return list(self.scheduler.requests[request_id].output_token_ids)

    def block_ids(self, request_id: str) -> list[int]:
        (block_ids,) = self.scheduler.kv_cache_manager.get_block_ids(request_id)
        return list(block_ids)

    def num_free_blocks(self) -> int:
        return self.scheduler.kv_cache_manager.block_pool.get_num_free_blocks()


# --- vLLM's sampler masks (the sampling exercises' grader) ------------------------------------


def apply_top_k_top_p(logits: Any, top_k: Any, top_p: Any) -> Any:
    """vLLM's own top-k/top-p masking, the truth a sampler's nucleus filter is graded against.

    Why the PyTorch version (`apply_top_k_top_p_pytorch` in vllm/v1/sample/ops/topk_topp_sampler.py):
    the dispatching `apply_top_k_top_p` picks a Triton kernel where Triton is installed; the
    PyTorch one is the same rule on every machine, and it is what vLLM's CPU sampler runs.

    Args:
        logits: (num_seqs, vocab_size) float logits; not modified (a copy is masked).
        top_k: (num_seqs,) int tensor or None.
        top_p: (num_seqs,) float tensor or None.

    Returns:
        (num_seqs, vocab_size): the logits with every token outside top-k/top-p set to -inf.
    """
    check_vllm_version()
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    return apply_top_k_top_p_pytorch(logits.clone(), top_k, top_p)
