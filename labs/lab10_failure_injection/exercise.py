"""Lab 10 exercises: read a failure from what the engine and the server expose.

Fill in each function, then run `make grade LAB=10`. The tests (tests/exercises/test_lab10_failure_injection.py)
compare your answers with vLLM's own objects, not with fixed numbers: what vLLM's real `Scheduler`
(run standalone, no model) throws away at each preemption and whether it preempts with the KV pool
you computed, and states captured from a real vLLM server that was made to hang, crash and queue.
"""

from __future__ import annotations


def tokens_lost_to_preemption(num_scheduled_tokens: list[dict[str, int]],
                              preempted_req_ids: list[set[str]]) -> dict[str, list[int]]:
    """Per request, the tokens each of its preemptions threw away, from the scheduler's outputs alone.

    Each engine step, vLLM's scheduler returns a `SchedulerOutput`: `num_scheduled_tokens`
    (request id -> tokens computed in this step: a prefill chunk, or 1 for a decode) and
    `preempted_req_ids` (requests whose KV blocks it took back in this step). vLLM v1 preempts by
    recompute: the preempted request's `num_computed_tokens` drops to 0 and, when it is admitted
    again, it prefills everything once more. So the tokens a preemption throws away are all the
    tokens that request was scheduled since it was last admitted (its first admission, or its
    last preemption). A request preempted in step s gets no tokens in step s (vLLM gives them back
    to the budget), so preemptions of a step come before its scheduled tokens.
    (Prefix caching is off in these runs: nothing lost is found again in the cache.)

    Args:
        num_scheduled_tokens: one dict per step, in order.
        preempted_req_ids: one set per step, in order (same length).

    Returns:
        request id -> tokens lost at each of its preemptions, in order; requests never preempted
        are left out. The sum of everything is the recompute tax.
    """
    raise NotImplementedError("Exercise 1: tokens thrown away at each preemption")


def min_kv_blocks_without_preemption(prompt_lens: list[int], max_tokens: list[int], block_size: int) -> int:
    """The smallest KV pool (`num_gpu_blocks`, vLLM's null block included) that serves a burst with no preemption.

    All requests arrive at once; the scheduler's limits are loose (max_num_seqs >= the burst and a
    token budget >= the sum of the prompts), so every request is admitted in step 1 and prefills
    its whole prompt there; each later step decodes one token for every request still running. A
    request with a prompt of p tokens and m outputs is scheduled in steps 1..m: at step s it holds
    the KV of its first p + s - 1 tokens (the token sampled last is never computed), in blocks of
    `block_size` tokens (a partly filled block is a whole block). It frees its blocks when it
    finishes, after step m. vLLM keeps one extra block (block 0, the "null block") out of use.

    Returns the smallest `num_gpu_blocks` with which the whole burst runs together from step 1 to
    its end: every request admitted in step 1, none ever preempted. With one block less, vLLM
    either cannot admit them all in step 1 or must preempt one.

    Args:
        prompt_lens: prompt tokens of each request.
        max_tokens: outputs of each request (EOS never comes).
        block_size: tokens per KV block.

    Returns:
        num_gpu_blocks (an int).

    Hint: the peak is not always at the end; a short request frees its blocks early.
    """
    raise NotImplementedError("Exercise 2: the smallest KV pool for a burst")


def classify_server_state(before: dict[str, float] | None, after: dict[str, float] | None,
                          processes: dict[str, bool]) -> str:
    """Running, hung, crashed or overloaded: what an operator concludes from outside.

    The inputs are what an operator can read without touching the engine: two readings of the
    server's `/metrics` a few seconds apart (vLLM names: counters `vllm:generation_tokens_total`,
    `vllm:prompt_tokens_total`, `vllm:num_preemptions_total`; gauges `vllm:num_requests_running`,
    `vllm:num_requests_waiting`; None: /metrics did not answer) and whether each of the server's
    processes is alive (`api_server`, `engine_core`, `worker`). The rules:
      - "crashed": a reading is None, or any process is not alive;
      - "hung": every process alive, requests in the engine (running + waiting > 0 in both
        readings), and no token moved (neither token counter grew). Note that `/health` says 200
        here: it only asks whether the engine was marked dead (`AsyncLLM.check_health`);
      - "overloaded": tokens moved, and requests were queued (waiting > 0 in either reading) or the
        preemption counter grew;
      - "running": anything else (serving, or idle).

    Args:
        before, after: metric name -> value, or None.
        processes: role -> alive.

    Returns:
        "running", "hung", "crashed" or "overloaded".
    """
    raise NotImplementedError("Exercise 3: classify a server's state")
