"""Lab 3: continuous batching under scarce KV memory, safe to run and step through under a debugger.

Six requests of 40..140 prompt tokens, 40 output tokens each, on an engine with 11 usable KV
blocks of 32 tokens, at most 4 running requests and a 64-token budget per step (labs.lab3_continuous_batching.batching.SCARCE_KV):
long prompts are prefilled in chunks, the KV cache runs out, the newest running request is
preempted and later recomputed, and every request still finishes. One line per engine step.

Run it:   python my_debug_scripts/step3_continuous_batching.py   (or F5 "Lab 3: continuous batching (debug-safe)")
Debug it: python -m debugpy --listen 127.0.0.1:5678 --wait-for-client my_debug_scripts/step3_continuous_batching.py

Breakpoints worth setting (with "justMyCode": false, as the F5 configurations have it):
  - vllm/v1/engine/core.py            EngineCore.step   one step: schedule -> execute_model -> update_from_output
  - vllm/v1/core/sched/scheduler.py   Scheduler.schedule   running requests first, then waiting ones, within
        `token_budget`; watch `num_new_tokens` shrink to the budget left (a prefill chunk)
  - vllm/v1/core/sched/scheduler.py   Scheduler._preempt_request   hit when allocate_slots finds no free block:
        `request.num_computed_tokens = 0` is the recompute you see later; the call stack shows who needed the block
  - vllm/v1/core/kv_cache_manager.py  KVCacheManager.allocate_slots   returns None when the pool is empty;
        a conditional breakpoint `self.block_pool.get_num_free_blocks() == 0` stops just before a preemption
  - vllm/v1/core/sched/scheduler.py   Scheduler.update_from_output   sampled tokens appended, finished requests freed
"""

# Must run before anything imports vLLM: it decides whether the engine core gets its own process.
from labs.core.debug.safe import prepare_debug_session

log = prepare_debug_session(__file__)

import sys  # noqa: E402


def main() -> int:
    from labs.lab3_continuous_batching.batching import SCARCE_KV, request_summary
    from labs.lab3_continuous_batching.traces import preemption_scenario
    from labs.core.engine import free_llm, make_llm
    from labs.core.live import EngineObserver, StepObservation

    log.info("building a scarce-KV engine: %s", SCARCE_KV)
    llm = make_llm(**SCARCE_KV)
    observer = EngineObserver(llm)
    trace = preemption_scenario()
    for req in trace:
        observer.add_request(req.request_id, req.prompt_token_ids, req.sampling_params())

    def on_step(obs: StepObservation) -> None:
        print(observer.describe(obs), flush=True)
        if obs.preempted_ids:
            log.info("step %d preempted %s", obs.step, obs.preempted_ids)

    observer.run(on_step=on_step)  # BREAKPOINT here, then step into EngineObserver.step -> LLMEngine.step

    print(request_summary(observer.history, trace).to_string())
    for req in trace:
        num_outputs = len(observer.outputs[req.request_id].outputs[0].token_ids)
        log.info("%s: %d prompt tokens -> %d output tokens", req.request_id, len(req.prompt_token_ids), num_outputs)

    # End cleanly: free the engine and return, so stepping out of main() does not land in
    # interpreter shutdown code waiting on the engine's threads.
    free_llm(llm)
    log.info("done")
    return 0


if __name__ == "__main__":
    from labs.core.errors import run_main

    sys.exit(run_main(main))  # a missing model or unsupported setting prints one clear message
