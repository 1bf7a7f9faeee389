"""Lab 10 reference solution: tokens lost to preemption, the smallest KV pool for a burst, and a
server-state classifier. Graded by tests/exercises/test_lab10_failure_injection.py (against vLLM's
own Scheduler run standalone and states captured from a real vLLM server).
"""

from __future__ import annotations

STATES = ("running", "hung", "crashed", "overloaded")


def tokens_lost_to_preemption(num_scheduled_tokens: list[dict[str, int]],
                              preempted_req_ids: list[set[str]]) -> dict[str, list[int]]:
    """Per request, the tokens each of its preemptions threw away, from the scheduler's outputs alone."""
    since_admitted: dict[str, int] = {}
    lost: dict[str, list[int]] = {}
    for scheduled, preempted in zip(num_scheduled_tokens, preempted_req_ids):
        for request_id in sorted(preempted):  # before this step's tokens: a preempted request gets none
            lost.setdefault(request_id, []).append(since_admitted.get(request_id, 0))
            since_admitted[request_id] = 0
        for request_id, n in scheduled.items():
            since_admitted[request_id] = since_admitted.get(request_id, 0) + n
    return lost


def _blocks(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


def min_kv_blocks_without_preemption(prompt_lens: list[int], max_tokens: list[int], block_size: int) -> int:
    """The smallest num_gpu_blocks (null block included) that runs the whole burst together, unpreempted."""
    peak = max(sum(_blocks(p + step - 1, block_size) for p, m in zip(prompt_lens, max_tokens) if m >= step)
               for step in range(1, max(max_tokens) + 1))
    return peak + 1  # vLLM's null block 0 is never handed out


def classify_server_state(before: dict[str, float] | None, after: dict[str, float] | None,
                          processes: dict[str, bool]) -> str:
    """Running, hung, crashed or overloaded, from two /metrics readings and the processes' liveness."""
    if before is None or after is None or not all(processes.values()):
        return "crashed"

    def grew(name: str) -> bool:
        return after.get(name, 0.0) > before.get(name, 0.0)

    def in_engine(reading: dict[str, float]) -> float:
        return reading.get("vllm:num_requests_running", 0.0) + reading.get("vllm:num_requests_waiting", 0.0)

    tokens_moved = grew("vllm:generation_tokens_total") or grew("vllm:prompt_tokens_total")
    if not tokens_moved and in_engine(before) > 0 and in_engine(after) > 0:
        return "hung"
    queued = max(before.get("vllm:num_requests_waiting", 0.0), after.get("vllm:num_requests_waiting", 0.0)) > 0
    if tokens_moved and (queued or grew("vllm:num_preemptions_total")):
        return "overloaded"
    return "running"
