"""Lab 6: profiling a few engine steps with vLLM's own torch profiler, safe to run under a debugger.

Builds an engine with `profiler_config` (vLLM creates its profiler at start-up), generates four
phrasebook translations between `LLM.start_profile()` and `stop_profile()`, prints the operators
that took the most CPU time (self time) and the trace file to open in https://ui.perfetto.dev,
then times each stage of one request (tokenization, scheduling, forward, sampling, detokenization).

Run it:   python my_debug_scripts/step6_profiling.py        (or F5 "Lab 6: profiling (debug-safe)")
Debug it: python -m debugpy --listen 127.0.0.1:5678 --wait-for-client my_debug_scripts/step6_profiling.py
Under a debugger every Python line is traced, so the timings grow; the operator ranking barely moves.

Breakpoints worth setting (with "justMyCode": false, as the F5 configurations have it):
  - vllm/profiler/wrapper.py          TorchProfilerWrapper._start / _stop   where torch.profiler starts, and where
        the trace file is written (tensorboard_trace_handler) and the table printed
  - vllm/v1/worker/gpu_worker.py      Worker.annotate_profile   names each step execute_context_..._generation_...
  - vllm/v1/engine/core.py            EngineCore.step   schedule -> execute_model -> sample_tokens -> update_from_output
  - vllm/v1/worker/gpu_model_runner.py GPUModelRunner.execute_model   the forward pass (the CPU runner inherits it)
  - vllm/v1/sample/sampler.py         Sampler.forward   logits -> next token ids
  - vllm/v1/engine/output_processor.py OutputProcessor.process_outputs   new token ids -> text (detokenizer)
"""

# Must run before anything imports vLLM: it decides whether the engine core gets its own process.
from labs.core.debug.safe import prepare_debug_session

log = prepare_debug_session(__file__)

import sys  # noqa: E402


def main() -> int:
    from vllm import SamplingParams

    from labs.lab6_profiling import profiling as prof
    from labs.lab1_basic_inference.inference import render_chat
    from labs.core.engine import free_llm, make_llm
    from labs.core.models.phrasebook import load_phrasebook, translation_messages

    log.info("building the engine with vLLM's torch profiler configured")
    llm = make_llm(profiler_config=prof.profiler_config())  # BREAKPOINT here, then step into LLM.__init__
    prompts = [render_chat(llm, translation_messages(e.ja)) for e in load_phrasebook()[:4]]
    params = SamplingParams(temperature=0.0, max_tokens=32)
    llm.generate(prompts, params, use_tqdm=False)  # warm-up: the first steps allocate and pack kernels

    log.info("profiling %d prompts", len(prompts))
    result = prof.profile_generate(llm, prompts, params, prefix="step3")  # BREAKPOINT, step into it
    print(result.top_ops.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(prof.annotated_steps(result.trace_path).to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print(f"trace: {result.trace_path}\n  open https://ui.perfetto.dev and drag the file in")
    log.info("trace written to %s", result.trace_path)

    stages = prof.time_stages(llm, prompts[:1], params)
    print(stages.to_string(index=False, float_format=lambda x: f"{x:.3f}"))

    # End cleanly: free the engine and return, so stepping out of main() does not land in
    # interpreter shutdown code waiting on the engine's threads.
    free_llm(llm)
    log.info("done")
    return 0


if __name__ == "__main__":
    from labs.core.errors import run_main

    sys.exit(run_main(main))  # a missing model or unsupported setting prints one clear message
