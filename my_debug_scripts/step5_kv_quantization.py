"""Lab 5: KV-cache quantization, safe to run and step through under a debugger.

Calibrates static scales on a few phrasebook prompts, answers them with an int8 and an fp8 KV
cache in the mini engine, then with real vLLM and kv_cache_dtype="fp8" where the hardware can:
with vLLM's default scales (1.0) and with the calibrated ones (a checkpoint copy that carries
them, labs/lab5_kv_quantization/vllm_scales.py). All on the selected model (VLLM_MODEL, default
tiny-phrasebook); the mini engine runs Qwen2 and plain Llama, else it uses tiny-phrasebook and says so.

Run it:   python my_debug_scripts/step5_kv_quantization.py   (or F5 "Lab 5: KV-cache quantization (debug-safe)")

Breakpoints worth setting (justMyCode: false):
  - labs/lab5_kv_quantization/cache.py                       QuantizedPagedAttention.forward   quantize on write, dequantize on read
  - labs/lab5_kv_quantization/quantize.py                    quantize                          saturate, then round (int8) or cast (fp8)
  - vllm/v1/attention/backends/cpu_attn.py       CPUAttentionBackendImpl.forward   vLLM writes K / k_scale as fp8 codes
  - vllm/model_executor/layers/quantization/kv_cache.py  BaseKVCacheMethod.process_weights_after_loading
        where the calibrated checkpoint's k_scale / v_scale become the layer's _k_scale_float (1.0 without them)
"""

# Must run before anything imports vLLM: it decides whether the engine core gets its own process.
from labs.core.debug.safe import prepare_debug_session

log = prepare_debug_session(__file__)

import sys  # noqa: E402

NUM_PROMPTS = 4  # enough to see every answer; the notebook runs all 320 (a sample of 64 on another model)


def main() -> int:
    from labs.core.engine import plan_run
    from labs.lab5_kv_quantization.cache import kv_cache_nbytes, make_quantized_llm
    from labs.lab5_kv_quantization.calibrate import calibrate
    from labs.lab5_kv_quantization.measure import greedy_answers, phrasebook_messages
    from labs.lab5_kv_quantization.vllm_fp8 import compare_kv_dtypes, vllm_kv_runs
    from labs.core.mini.config import mini_engine_unsupported_reason
    from labs.core.mini.llm import LLM

    model = plan_run().model.path  # the learner's selection
    print(f"model: {model}")
    mini_problem = mini_engine_unsupported_reason(model)
    mini_model = "tiny-phrasebook" if mini_problem else model
    if mini_problem:
        print(f"The mini engine cannot run {model} ({mini_problem}); it uses tiny-phrasebook, "
              "and vLLM runs without calibrated scales.")
    messages = phrasebook_messages()[:NUM_PROMPTS]
    baseline = LLM(mini_model, num_kv_blocks=64)
    amax = calibrate(baseline, messages)  # BREAKPOINT in recording_amax's hook to see K/V per layer
    print(f"calibrated on {amax.num_tokens} tokens; K amax per layer and KV head:\n{amax.key}")
    expected = [o.outputs[0].text for o in greedy_answers(baseline, messages)]
    for scheme in ("int8_per_token", "fp8_e4m3"):
        llm = make_quantized_llm(mini_model, scheme, amax, num_kv_blocks=64)
        answers = [o.outputs[0].text for o in greedy_answers(llm, messages)]  # BREAKPOINT in QuantizedPagedAttention.forward
        ratio = kv_cache_nbytes(llm) / kv_cache_nbytes(baseline)
        print(f"{scheme}: KV bytes {ratio:.3f} of bf16, answers equal bf16's: {answers == expected} {answers}")
        log.info("%s: ratio %.3f, same answers %s", scheme, ratio, answers == expected)

    # One engine at a time: auto, fp8 with scales 1.0, fp8 with the calibrated scales.
    runs = vllm_kv_runs(model, messages, None if mini_problem else amax, kv_cache_dtypes=("auto", "fp8"))
    print(compare_kv_dtypes(runs).to_string())
    return 0


if __name__ == "__main__":
    from labs.core.errors import run_main

    sys.exit(run_main(main))  # a missing model or unsupported setting prints one clear message
