"""Lab 9: two LoRA adapters and the base model in one batch, safe to run under a debugger.

Builds an engine with `enable_lora=True` (3 slots at rank 16), sends the same phrasebook sentences
with no adapter, the `english` adapter and the `glossary` adapter in ONE `llm.chat` call, records
which request ran with which adapter slot in every engine step, and prints the answers, the
steps, the slots and the bytes one slot takes.

Run it:   python my_debug_scripts/step9_multi_lora.py        (or F5 "Lab 9: multi-LoRA (debug-safe)")
Debug it: python -m debugpy --listen 127.0.0.1:5678 --wait-for-client my_debug_scripts/step9_multi_lora.py

Breakpoints worth setting (with "justMyCode": false, as the F5 configurations have it):
  - vllm/lora/peft_helper.py              PEFTHelper.__post_init__   adapter_config.json -> scaling (alpha / r, rsLoRA)
  - vllm/lora/lora_model.py               LoRAModel.from_local_checkpoint   the adapter's tensors read from disk
  - vllm/lora/model_manager.py            LoRAModelManager.activate_adapter   an adapter copied into a free slot
        (`lora_index_to_id`), its scaling already folded into B
  - vllm/v1/worker/lora_model_runner_mixin.py LoRAModelRunnerMixin.set_active_loras   each step: the input
        batch's request -> adapter mapping becomes a per-token LoRAMapping
  - vllm/lora/punica_wrapper/punica_base.py PunicaWrapperBase.update_metadata   adapter ids -> slot per token
  - vllm/lora/ops/torch_ops/lora_ops.py   bgmv_shrink / bgmv_expand   the per-token A and B gathered by slot
        (watch `lora_indices_tensor`: -1 for a request without adapter)
"""

# Must run before anything imports vLLM: it decides whether the engine core gets its own process.
from labs.core.debug.safe import prepare_debug_session

log = prepare_debug_session(__file__)

import sys  # noqa: E402


def main() -> int:
    from labs.core.engine import free_llm
    from labs.core.vllm_internals import lora as vi_lora
    from labs.lab9_multi_lora import multi_lora as ml

    log.info("building the engine with LoRA slots")
    llm = ml.make_lora_llm()  # BREAKPOINT here, then step into LLM.__init__
    sentences = ["おはようございます。", "お名前を教えていただけますか？"]
    adapters = [None, "english", "glossary"]
    log.info("one batch: %d sentences x %s", len(sentences), adapters)
    run = ml.mixed_run(llm, [s for s in sentences for _ in adapters], adapters * len(sentences), max_tokens=16)  # BREAKPOINT
    for adapter, answer in zip(run.adapters, run.answers):
        print(f"{adapter or 'base':9s} -> {answer}")
    print(run.steps_table().head(4).to_string())
    print(run.first_step_tokens().to_string(index=False))
    print(f"slots: {vi_lora.adapter_slots(llm)}  ids: {ml.ADAPTER_IDS}  "
          f"bytes per slot: {vi_lora.bytes_per_slot(llm)}")
    # End cleanly: free the engine and return, so stepping out of main() does not land in
    # interpreter shutdown code waiting on the engine's threads.
    free_llm(llm)
    log.info("done")
    return 0


if __name__ == "__main__":
    from labs.core.errors import run_main

    sys.exit(run_main(main))  # a stale adapter or a missing model prints one clear message
