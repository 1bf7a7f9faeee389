"""Lab 10: a KV-cache storm on a real engine, step by step, safe to run under a debugger.

Builds an in-process engine with 12 KV blocks (`num_gpu_blocks_override=12`), sends 8 requests at
once that need 3 blocks each at their end, and steps the engine until all finish: prints the steps
where the scheduler preempted, the recompute tax (from the scheduler's outputs, and as vLLM's
scheduler counted it at each preemption), then replays the burst through vLLM's real Scheduler
with no model under each knob (max_num_seqs, max_num_batched_tokens, KV blocks).
The hang and the crash need a server: `python -m labs.lab10_failure_injection hang | crash`.

Run it:   python my_debug_scripts/step10_failure_injection.py     (or F5 "Lab 10: failure injection (debug-safe)")
Debug it: python -m debugpy --listen 127.0.0.1:5678 --wait-for-client my_debug_scripts/step10_failure_injection.py

Breakpoints worth setting (with "justMyCode": false, as the F5 configurations have it):
  - vllm/v1/core/sched/scheduler.py     Scheduler.schedule   the loop over running requests: allocate_slots
        returns None when no block is free, and the lowest-priority running request is preempted
  - vllm/v1/core/sched/scheduler.py     Scheduler._preempt_request   blocks freed, num_computed_tokens = 0,
        num_preemptions += 1, back to the front of the waiting queue (a conditional breakpoint on
        request.num_preemptions > 0 stops at a second preemption of the same request)
  - vllm/v1/core/kv_cache_manager.py    KVCacheManager.allocate_slots   where "no free block" is decided
  - vllm/v1/core/block_pool.py          BlockPool.get_num_free_blocks / free_blocks
  - vllm/v1/executor/multiproc_executor.py  MultiprocExecutor.execute_model (timeout
        VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS) and start_worker_monitor (what a crashed worker triggers)
"""

# Must run before anything imports vLLM: it decides whether the engine core gets its own process.
from labs.core.debug.safe import prepare_debug_session

log = prepare_debug_session(__file__)

import sys  # noqa: E402


def main() -> int:
    from labs.core.engine import free_llm
    from labs.lab10_failure_injection import kv_storm as ks

    log.info("building an engine with %s", ks.STORM_ENGINE)
    llm = ks.make_storm_engine()  # BREAKPOINT here to see the KV cache sized by num_gpu_blocks_override
    run = ks.run_storm(llm)  # BREAKPOINT, then one in Scheduler._preempt_request
    table = ks.storm_table(run)
    print(table[(table["preempted"] != "") | (table.index <= 2)].to_string())
    print("\n".join(ks.explain_storm(run)))
    print(ks.compare_knobs(run.trace).to_string())

    # End cleanly: free the engine and return, so stepping out of main() does not land in
    # interpreter shutdown code waiting on the engine's threads.
    free_llm(llm)
    log.info("done")
    return 0


if __name__ == "__main__":
    from labs.core.errors import run_main

    sys.exit(run_main(main))  # a missing model or unsupported setting prints one clear message
