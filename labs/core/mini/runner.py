"""The model runner: owns the weights and the KV cache tensors, turns a schedule into one forward pass.

The scheduler only decides *how many* tokens each request runs this step; the runner lays those
tokens out as one flat batch (input ids, positions), says where their K/V go (slot mapping) and
where each request's earlier K/V are (block tables), runs the model once, and samples the next
token of every request whose prompt is now fully computed (vLLM: gpu_model_runner.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from labs.core.mini.attention import AttentionMetadata, PrefillChunk
from labs.core.mini.config import Config
from labs.core.mini.model import Qwen2ForCausalLM
from labs.core.mini.request import Request
from labs.core.mini.sampler import SamplingParams, sample


def slot_mapping_for(block_ids: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Cache slots of token positions [start, end) of a request whose block table is `block_ids`.

    Why slots: the cache is one big array of (num_blocks * block_size) token rows; a token's row
    is its block's id times block_size plus its offset in the block. Blocks of one request are
    scattered anywhere in the cache, which is the whole point of paging.
    """
    return [block_ids[pos // block_size] * block_size + pos % block_size for pos in range(start, end)]


@dataclass
class ModelInputs:
    """One step's batch, ready for the model.

    Attributes:
        input_ids: (num_tokens,) the scheduled tokens of all requests, one request after another.
        positions: (num_tokens,) each token's position in its request.
        attn_metadata: where each request's tokens and K/V are.
        logits_indices: (num_sampled,) the batch row of each sampled request's last token.
        sampled_req_ids: the requests that get a new token this step, in the order of logits_indices.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    attn_metadata: AttentionMetadata
    logits_indices: torch.Tensor
    sampled_req_ids: list[str]


class ModelRunner:
    """Weights + KV cache of one model on one device."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.device = torch.device(config.device)
        if self.device.type == "cpu" and config.num_cpu_threads:
            torch.set_num_threads(config.num_cpu_threads)  # process-wide; see Config.num_cpu_threads
        self.block_size = config.block_size
        self.model = Qwen2ForCausalLM.from_pretrained(config.model, config.shape, config.max_model_len,
                                                      config.torch_dtype, self.device)
        if config.tensor_parallel_size > 1:
            from labs.core.mini.tensor_parallel import shard_mlps

            shard_mlps(self.model, config.tensor_parallel_size)
        self.kv_cache = self.allocate_kv_cache(config.get_num_kv_blocks())

    def allocate_kv_cache(self, num_blocks: int) -> torch.Tensor:
        """One tensor for every layer's keys and values, handed to each layer as views.

        Returns:
            (2, num_layers, num_blocks, block_size, num_kv_heads, head_dim): [0] keys, [1] values.
        """
        shape = self.config.shape
        kv_cache = torch.zeros(2, shape.num_hidden_layers, num_blocks, self.block_size, shape.num_key_value_heads,
                               shape.head_dim, dtype=self.config.torch_dtype, device=self.device)
        for layer_idx, layer in enumerate(self.model.model.layers):
            layer.self_attn.attn.key_cache = kv_cache[0, layer_idx]
            layer.self_attn.attn.value_cache = kv_cache[1, layer_idx]
        return kv_cache

    def prepare_inputs(self, num_scheduled_tokens: dict[str, int], requests: dict[str, Request],
                       req_to_block_ids: dict[str, list[int]]) -> ModelInputs:
        """Lay the scheduled tokens of every request out as one flat batch (vLLM: `_prepare_inputs`).

        Args:
            num_scheduled_tokens: request_id -> tokens to run now (from the scheduler), starting at
                each request's `num_computed_tokens`.
            requests: request_id -> request (at least the scheduled ones).
            req_to_block_ids: request_id -> its block table, already big enough for this step.
        """
        input_ids: list[int] = []
        positions: list[int] = []
        slot_mapping: list[int] = []
        decode_token_indices: list[int] = []
        decode_block_tables: list[list[int]] = []
        decode_seq_lens: list[int] = []
        prefills: list[PrefillChunk] = []
        logits_indices: list[int] = []
        sampled_req_ids: list[str] = []
        for req_id, num_tokens in num_scheduled_tokens.items():
            request, block_ids = requests[req_id], req_to_block_ids[req_id]
            start, end = request.num_computed_tokens, request.num_computed_tokens + num_tokens
            row = len(input_ids)
            input_ids += request.all_token_ids[start:end]
            positions += range(start, end)
            slot_mapping += slot_mapping_for(block_ids, start, end, self.block_size)
            if num_tokens == 1:
                decode_token_indices.append(row)
                decode_block_tables.append(block_ids)
                decode_seq_lens.append(end)
            else:
                context_slots = slot_mapping_for(block_ids, 0, end, self.block_size)
                prefills.append(PrefillChunk(row, row + num_tokens, self._tensor(context_slots)))
            if end == request.num_tokens:  # a prefill chunk short of the end has nothing to sample
                logits_indices.append(row + num_tokens - 1)
                sampled_req_ids.append(req_id)

        max_num_blocks = max((len(b) for b in decode_block_tables), default=0)
        padded_block_tables = [b + [0] * (max_num_blocks - len(b)) for b in decode_block_tables]
        attn_metadata = AttentionMetadata(
            slot_mapping=self._tensor(slot_mapping),
            decode_token_indices=self._tensor(decode_token_indices),
            decode_block_tables=self._tensor(padded_block_tables).view(len(padded_block_tables), max_num_blocks),
            decode_seq_lens=self._tensor(decode_seq_lens),
            prefills=prefills,
        )
        return ModelInputs(self._tensor(input_ids), self._tensor(positions), attn_metadata,
                           self._tensor(logits_indices), sampled_req_ids)

    @torch.inference_mode()
    def compute_logits(self, inputs: ModelInputs) -> torch.Tensor:
        """Forward pass; (num_sampled, vocab_size) logits at each sampled request's last token."""
        hidden_states = self.model(inputs.input_ids, inputs.positions, inputs.attn_metadata)
        return self.model.compute_logits(hidden_states[inputs.logits_indices])

    def execute_model(self, num_scheduled_tokens: dict[str, int], requests: dict[str, Request],
                      req_to_block_ids: dict[str, list[int]], sampling_params: dict[str, SamplingParams],
                      generators: dict[str, torch.Generator | None]) -> dict[str, list[int]]:
        """Run one step: prepare the batch, run the model, sample.

        Args:
            num_scheduled_tokens, requests, req_to_block_ids: as in `prepare_inputs`.
            sampling_params: request_id -> how to sample it.
            generators: request_id -> its seeded generator, or None.

        Returns:
            request_id -> [the sampled token] for requests that reach their last token this step,
            [] for requests in the middle of a chunked prefill.
        """
        inputs = self.prepare_inputs(num_scheduled_tokens, requests, req_to_block_ids)
        logits = self.compute_logits(inputs)
        token_ids = sample(logits, [sampling_params[r] for r in inputs.sampled_req_ids],
                           [generators[r] for r in inputs.sampled_req_ids])
        sampled_token_ids: dict[str, list[int]] = {req_id: [] for req_id in num_scheduled_tokens}
        for req_id, token_id in zip(inputs.sampled_req_ids, token_ids):
            sampled_token_ids[req_id] = [token_id]
        return sampled_token_ids

    def _tensor(self, values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)
