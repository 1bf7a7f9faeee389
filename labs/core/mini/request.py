"""A request as the scheduler and the KV cache manager see it (after vllm/v1/request.py).

Shared by the mini engine and the Lab 2/3 exercises, so an exercise's answer can be dropped
into the engine unchanged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class RequestStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    FINISHED_STOPPED = enum.auto()  # sampled an EOS / stop token
    FINISHED_LENGTH_CAPPED = enum.auto()  # reached max_tokens


@dataclass
class Request:
    """One generation request.

    Attributes:
        request_id: unique id.
        prompt_token_ids: the tokenized prompt.
        max_tokens: how many output tokens at most.
        output_token_ids: sampled so far.
        num_computed_tokens: tokens whose K/V are in the cache; the scheduler moves this forward
            until it catches up with `num_tokens` (prefill and decode are the same thing in v1).
        block_hashes: hashes of the request's *full* blocks, chained (each includes its parent's),
            filled in by the KV cache manager for prefix caching.
        status: where the request is in its life.
    """

    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int = 16
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_hashes: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH_CAPPED)
