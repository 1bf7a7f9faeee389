"""Lab 7: n-gram speculative decoding on the live engine, step by step, safe to run under a debugger.

Builds an engine with `speculative_config={"method": "ngram", "num_speculative_tokens": 3, ...}`,
generates the lab's "repeating" requests (the answer is a line of the prompt's glossary) while
recording every step, and prints each step's drafts, how many were accepted and what was kept,
then vLLM's spec-decode counters; then the same requests with the drafter switched off (plain
decoding on the same engine): the same tokens, in more steps.

Run it:   python my_debug_scripts/step7_speculative_decoding.py   (or F5 "Lab 7: speculative decoding (debug-safe)")
Debug it: python -m debugpy --listen 127.0.0.1:5678 --wait-for-client my_debug_scripts/step7_speculative_decoding.py

Breakpoints worth setting (with "justMyCode": false, as the F5 configurations have it):
  - vllm/v1/spec_decode/ngram_proposer.py  NgramProposer.propose   the drafter after each step: which
        requests get drafts (`valid_ngram_requests`), then `batch_proposal` -> the drafts per request
        (the numba function itself cannot be stepped into: it is compiled)
  - vllm/v1/worker/gpu_model_runner.py     GPUModelRunner.propose_draft_token_ids   method "ngram":
        `self.drafter.propose(...)` with the request's token ids so far (`input_batch.token_ids_cpu`)
  - vllm/v1/core/sched/scheduler.py         Scheduler.schedule   `request.spec_token_ids` ->
        `scheduled_spec_decode_tokens`: 1 + K tokens scheduled for a request with drafts
  - vllm/v1/sample/rejection_sampler.py     RejectionSampler.forward / rejection_sample   target logits
        at every draft position; greedy: argmax == draft? (`rejection_greedy_sample_kernel`; on CPU
        the C++ kernel vllm/utils/cpu_triton_utils.py registers)
  - vllm/v1/core/sched/scheduler.py         Scheduler.update_from_output   `num_accepted = len(generated) - 1`,
        rejected drafts rolled back from `num_computed_tokens`, `make_spec_decoding_stats`
  - vllm/v1/spec_decode/metrics.py          SpecDecodingStats.observe_draft   the counters behind get_metrics()
"""

# Must run before anything imports vLLM: it decides whether the engine core gets its own process.
from labs.core.debug.safe import prepare_debug_session

log = prepare_debug_session(__file__)

import sys  # noqa: E402


def main() -> int:
    from vllm import SamplingParams

    from labs.core.engine import free_llm
    from labs.core.vllm_internals.spec_decode import drafter_off, record_spec_steps, spec_decode_counters
    from labs.lab7_speculative_decoding import speculation as spec

    log.info("building an engine with n-gram speculative decoding")
    llm = spec.make_spec_llm()  # BREAKPOINT here, then step into LLM.__init__ (the drafter is built in the runner)
    prompts = spec.repeating_prompts(llm, num_prompts=2)
    params = SamplingParams(temperature=0.0, max_tokens=40)
    tokenizer = llm.get_tokenizer()

    before = spec_decode_counters(llm)
    with record_spec_steps(llm) as steps:
        outputs = llm.generate(prompts, params, use_tqdm=False)  # BREAKPOINT, then continue to the ones above
    after = spec_decode_counters(llm)
    for i, step in enumerate(steps):
        for req_id, num_tokens in step.num_scheduled_tokens.items():
            drafts = step.draft_token_ids.get(req_id, [])
            kept = step.sampled_token_ids.get(req_id, [])
            print(f"step {i:2d} {req_id[:12]:12s} computed {num_tokens:3d} tokens, drafts "
                  f"{tokenizer.decode(drafts)!r:24s} accepted {step.num_accepted(req_id)}, kept {tokenizer.decode(kept)!r}")
    print("vLLM's counters:", {k: after[k] if isinstance(after[k], list) else after[k] - before.get(k, 0.0)
                               for k in after})
    for out in outputs:
        print("->", out.outputs[0].text)

    with drafter_off(llm), record_spec_steps(llm) as plain_steps:
        plain = llm.generate(prompts, params, use_tqdm=False)
    same = [o.outputs[0].token_ids for o in plain] == [o.outputs[0].token_ids for o in outputs]
    print(f"plain decoding: {len(plain_steps)} steps instead of {len(steps)}; the same tokens: {same}")
    log.info("speculative %d steps, plain %d steps, same tokens %s", len(steps), len(plain_steps), same)

    # End cleanly: free the engine and return, so stepping out of main() does not land in
    # interpreter shutdown code waiting on the engine's threads.
    free_llm(llm)
    log.info("done")
    return 0


if __name__ == "__main__":
    from labs.core.errors import run_main

    sys.exit(run_main(main))  # a missing model or unsupported setting prints one clear message
