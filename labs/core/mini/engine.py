"""The engine: requests in, one `step()` at a time, finished requests out (vLLM: LLMEngine + EngineCore).

One step is the whole of vLLM in three lines (see `step`):
    scheduler_output = scheduler.schedule()          # Lab 3: who runs, how many tokens each
    sampled = model_runner.execute_model(...)        # batch -> forward (Lab 2's paged cache) -> sample
    finished = scheduler.update_from_output(...)     # advance, append tokens, free finished requests
Continuous batching and chunked prefill need nothing more: the scheduler decides them, and the
model runner runs whatever mix of prefill chunks and decodes it is handed.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from typing import Any

import torch

from labs.core.mini.config import Config
from labs.core.mini.request import Request
from labs.core.mini.runner import ModelRunner
from labs.core.mini.sampler import SamplingParams
from labs.core.grading import engine_part


class LLMEngine:
    """Scheduler + KV cache manager + model runner, and the sampling state of every request.

    Attributes:
        kv_cache_manager: Lab 2's block bookkeeping (which block ids each request owns).
        scheduler: Lab 3's scheduler, sharing that manager.
        model_runner: the weights and the KV cache tensors those block ids index.
    """

    def __init__(self, config: Config, eos_token_id: int | None) -> None:
        """Args:
            config: the engine's settings (the model folder among them).
            eos_token_id: the token that ends a request (unless it sets ignore_eos).
        """
        self.config = config
        self.eos_token_id = eos_token_id
        self.kv_cache_manager = engine_part("lab2_kv_cache").KVCacheManager(config.get_num_kv_blocks(), config.block_size,
                                               config.enable_prefix_caching)
        self.scheduler = engine_part("lab3_scheduler").Scheduler(self.kv_cache_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.model_runner = ModelRunner(config)
        self.sampling_params: dict[str, SamplingParams] = {}
        self.generators: dict[str, torch.Generator | None] = {}
        # What vLLM reports too: prompt tokens served by the prefix cache (RequestOutput.num_cached_tokens)
        # and preemptions (vllm:num_preemptions), so labs can see both mechanisms at work.
        self.num_cached_tokens: dict[str, int] = {}
        self.num_preemptions = 0
        self._request_counter = itertools.count()

    def add_request(self, prompt_token_ids: list[int], sampling_params: SamplingParams,
                    request_id: str | None = None) -> str:
        """Queue a request; it runs from the next `step()`.

        Returns:
            Its request id (the one given, or the next number as a string, like vLLM's `LLM`).
        """
        request_id = request_id if request_id is not None else str(next(self._request_counter))
        num_prompt_tokens = len(prompt_token_ids)
        if not 0 < num_prompt_tokens < self.config.max_model_len:
            raise ValueError(f"prompt of {num_prompt_tokens} tokens: need 1 to {self.config.max_model_len - 1} "
                             f"(max_model_len={self.config.max_model_len}, and room for one output token)")
        # Like vLLM: prompt + output never exceed max_model_len (positions beyond it have no RoPE entry).
        max_tokens = self.config.max_model_len - num_prompt_tokens
        if sampling_params.max_tokens is not None:
            max_tokens = min(max_tokens, sampling_params.max_tokens)
        self.sampling_params[request_id] = sampling_params
        generator = None
        if sampling_params.seed is not None:
            generator = torch.Generator(device=self.config.device).manual_seed(sampling_params.seed)
        self.generators[request_id] = generator
        self.scheduler.add_request(Request(request_id, list(prompt_token_ids), max_tokens=max_tokens))
        return request_id

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def step(self) -> list[Request]:
        """Schedule, run the model once, sample, and advance every scheduled request.

        Returns:
            The requests that finished in this step.
        """
        scheduler_output = self.scheduler.schedule()
        if not scheduler_output.num_scheduled_tokens:
            if self.has_unfinished_requests():  # nothing runs, nothing will ever free a block
                raise RuntimeError(f"the KV cache ({self.config.get_num_kv_blocks()} blocks of "
                                   f"{self.config.block_size} tokens) cannot hold the next waiting request: "
                                   "raise num_kv_blocks")
            return []
        requests = self.scheduler.requests
        self.num_preemptions += len(scheduler_output.preempted_req_ids)
        for req_id in scheduler_output.scheduled_new_req_ids:  # computed tokens now = prefix-cache hits
            self.num_cached_tokens.setdefault(req_id, requests[req_id].num_computed_tokens)
        sampled_token_ids = self.model_runner.execute_model(
            scheduler_output.num_scheduled_tokens, requests,
            {req_id: self.kv_cache_manager.get_block_ids(req_id) for req_id in scheduler_output.num_scheduled_tokens},
            self.sampling_params, self.generators)
        finished = self._update_from_output(scheduler_output, sampled_token_ids)
        for request in finished:
            del self.sampling_params[request.request_id], self.generators[request.request_id]
        return finished

    def pop_num_cached_tokens(self, request_id: str) -> int:
        """Prompt tokens of a finished request that came from the prefix cache (its first admission)."""
        return self.num_cached_tokens.pop(request_id)

    def _update_from_output(self, scheduler_output: Any,
                            sampled_token_ids: dict[str, list[int]]) -> list[Request]:
        """`scheduler.update_from_output`, once per distinct stop token in the batch.

        Why: Lab 3's scheduler takes one EOS id for the whole batch, while `ignore_eos` is a
        per-request setting; requests that ignore EOS are updated in a call of their own.
        """
        eos_of_request = {req_id: None if self.sampling_params[req_id].ignore_eos else self.eos_token_id
                          for req_id in scheduler_output.num_scheduled_tokens}
        finished: list[Request] = []
        for eos_token_id in dict.fromkeys(eos_of_request.values()):  # distinct, in batch order
            part = {req_id: n for req_id, n in scheduler_output.num_scheduled_tokens.items()
                    if eos_of_request[req_id] == eos_token_id}
            finished += self.scheduler.update_from_output(replace(scheduler_output, num_scheduled_tokens=part),
                                                          sampled_token_ids, eos_token_id)
        return finished
