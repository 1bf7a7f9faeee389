"""Lab 1: basic inference with vLLM, safe to run and step through under a debugger.

Run it:   python my_debug_scripts/step1_basic_inference.py        (or F5 "Lab 1: basic inference (debug-safe)")
Debug it: python -m debugpy --listen 127.0.0.1:5678 --wait-for-client my_debug_scripts/step1_basic_inference.py

Breakpoints worth setting (with "justMyCode": false, as the F5 configurations have it):
  - vllm/entrypoints/llm.py        LLM.__init__   engine args -> LLMEngine -> EngineCore
  - vllm/entrypoints/llm.py        LLM.generate   prompts become requests, then _run_engine loops step()
  - vllm/v1/core/sched/scheduler.py Scheduler.schedule   which request gets how many tokens this step
  - vllm/v1/core/kv_cache_manager.py KVCacheManager.allocate_slots   where KV blocks are handed out
  - vllm/model_executor/models/qwen2.py Qwen2ForCausalLM.forward   the model's forward pass (llama.py LlamaForCausalLM for Llama models)
The engine core runs in this process when a debugger is attached (see labs/core/debug/safe.py), so
every one of these is reachable from the main thread.
"""

# Must run before anything imports vLLM: it decides whether the engine core gets its own process.
from labs.core.debug.safe import prepare_debug_session

log = prepare_debug_session(__file__)

import sys  # noqa: E402


def main() -> int:
    from vllm import SamplingParams

    from labs.lab1_basic_inference.inference import render_chat
    from labs.core.engine import free_llm, make_llm
    from labs.core.models.phrasebook import load_phrasebook, translation_messages

    log.info("building the engine")
    llm = make_llm()  # BREAKPOINT here, then step into LLM.__init__
    prompts = [render_chat(llm, translation_messages(e.ja)) for e in load_phrasebook()[:4]]
    params = SamplingParams(temperature=0.0, max_tokens=48)

    log.info("generating %d prompts", len(prompts))
    outputs = llm.generate(prompts, params)  # BREAKPOINT here, then step into LLM.generate
    for out in outputs:
        log.info("%d prompt tokens -> %r", len(out.prompt_token_ids), out.outputs[0].text)
        print(out.outputs[0].text)

    # End cleanly: free the engine and return, so stepping out of main() does not land in
    # interpreter shutdown code waiting on the engine's threads.
    free_llm(llm)
    log.info("done")
    return 0


if __name__ == "__main__":
    from labs.core.errors import run_main

    sys.exit(run_main(main))  # a missing model or unsupported setting prints one clear message
