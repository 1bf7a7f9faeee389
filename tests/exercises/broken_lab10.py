"""A deliberately wrong Lab 10 implementation: the grader must fail it (see test_lab10_failure_injection.py)."""

from __future__ import annotations


def tokens_lost_to_preemption(num_scheduled_tokens: list[dict[str, int]],
                              preempted_req_ids: list[set[str]]) -> dict[str, list[int]]:
    # Classic mistake: counting from the request's arrival, not from its last admission, so a
    # request preempted twice is charged its first run again.
    total: dict[str, int] = {}
    lost: dict[str, list[int]] = {}
    for scheduled, preempted in zip(num_scheduled_tokens, preempted_req_ids):
        for request_id in sorted(preempted):
            lost.setdefault(request_id, []).append(total.get(request_id, 0))
        for request_id, n in scheduled.items():
            total[request_id] = total.get(request_id, 0) + n
    return lost


def min_kv_blocks_without_preemption(prompt_lens: list[int], max_tokens: list[int], block_size: int) -> int:
    # Classic mistake: every request's final size added up, as if none ever finished early, and
    # vLLM's null block forgotten.
    return sum(-(-(p + m - 1) // block_size) for p, m in zip(prompt_lens, max_tokens))


def classify_server_state(before: dict[str, float] | None, after: dict[str, float] | None,
                          processes: dict[str, bool]) -> str:
    # Classic mistake: trusting liveness alone (what /health checks): a hung server looks fine.
    if before is None or after is None or not all(processes.values()):
        return "crashed"
    if max(before.get("vllm:num_requests_waiting", 0.0), after.get("vllm:num_requests_waiting", 0.0)) > 0:
        return "overloaded"
    return "running"
