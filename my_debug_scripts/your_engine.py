"""Your engine: the mini engine built from YOUR block manager, paged attention and scheduler, step by step.

Six phrasebook prompts on a small engine (8 KV blocks, up to 6 requests, 64 tokens a step), so
blocks run out and a request is preempted; one line per step (who ran how many tokens, block
tables, free blocks), then each answer beside the reference engine's.

Run it:   python my_debug_scripts/your_engine.py          (or F5 "Your engine: your block manager, ...")
          python my_debug_scripts/your_engine.py --all    every part yours, passing its graders or not
          python my_debug_scripts/your_engine.py --parts lab3_scheduler   just these parts, no grading
By default your parts whose graded tests pass are used (they are run first, ~30 s; see
labs/your_engine/), the reference for the rest; $LABS_ENGINE, if set, is used as is.

Breakpoints worth setting (justMyCode: false; they are hit only for the parts that are yours):
  - labs/lab2_paged_attention/exercise_kv_cache.py        KVCacheManager.allocate_slots   blocks for this step's tokens
  - labs/lab2_paged_attention/exercise_kv_cache.py        KVCacheManager.free             a finished or preempted request
  - labs/lab2_paged_attention/exercise_paged_attention.py paged_attention                 one decode token per sequence
  - labs/lab3_continuous_batching/exercise.py             Scheduler.schedule              who runs, how many tokens, who is preempted
  - labs/core/mini/engine.py                              LLMEngine.step                  schedule -> model -> update, for any parts
"""

# Must run before anything imports vLLM: it decides whether the engine core gets its own process.
from labs.core.debug.safe import prepare_debug_session

log = prepare_debug_session(__file__)

import argparse  # noqa: E402
import sys  # noqa: E402

NUM_PROMPTS = 6
SMALL_ENGINE = {"num_kv_blocks": 8, "max_num_seqs": 6, "max_num_batched_tokens": 64}


def main() -> int:
    import os

    from labs import your_engine as ye
    from labs.core.grading import ENGINE_ENV, ENGINE_PARTS, parse_engine_setting
    from labs.core.mini.llm import LLM, SamplingParams

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="every part yours (LABS_ENGINE=learner), no grading")
    parser.add_argument("--parts", default=None, help="e.g. lab2_kv_cache,lab3_scheduler: these yours, no grading")
    args = parser.parse_args()
    if args.all:
        parts = ye.parse_parts("all")
    elif args.parts is not None:
        parts = ye.parse_parts(args.parts)
    elif os.environ.get(ENGINE_ENV):
        parts = ye.Parts(parse_engine_setting(os.environ[ENGINE_ENV]), {})
    else:
        log.info("grading your engine's parts (%s)", ", ".join(ENGINE_PARTS))
        parts = ye.grade_parts("learner")
    print(f"Parts ({ENGINE_ENV}={parts.engine_setting}):\n{parts.describe()}\n")

    ja, messages = ye.phrasebook_messages()
    ja, messages = ja[:NUM_PROMPTS], messages[:NUM_PROMPTS]
    params = SamplingParams(temperature=0.0, max_tokens=ye.MAX_TOKENS)
    with ye.engine_parts(parts):
        log.info("building the mini engine with %s", parts.engine_setting)
        llm = LLM(ye.MODEL, **SMALL_ENGINE)  # BREAKPOINT here, then step into LLMEngine.__init__
        engine = llm.llm_engine
        prompt_ids = ye.render_prompts(llm.get_tokenizer(), messages)
        request_ids = [engine.add_request(ids, params) for ids in prompt_ids]
        engine_requests = dict(engine.scheduler.requests)  # the Request objects, kept past their end
        finished = {}
        step = 0
        while engine.has_unfinished_requests():
            step += 1
            preempted_before = engine.num_preemptions
            done_now = [r.request_id for r in engine.step()]  # BREAKPOINT here, then step into your parts
            finished.update((r, engine_requests[r]) for r in done_now)
            manager = engine.kv_cache_manager
            tables = {r: manager.get_block_ids(r) for r in request_ids if r not in finished and manager.get_block_ids(r)}
            print(f"step {step:3d}: free blocks {manager.get_num_free_blocks():2d}  block tables {tables}"
                  + ("  PREEMPTION" if engine.num_preemptions > preempted_before else "")
                  + (f"  finished {done_now}" if done_now else ""))
            if step > 2000:
                raise RuntimeError("2000 steps and requests still unfinished: the scheduler makes no progress")
        outputs = [finished[r].output_token_ids for r in request_ids]
        log.info("%d steps, %d preemptions", step, engine.num_preemptions)

    reference_llm = LLM(ye.MODEL, **SMALL_ENGINE)  # the reference parts (LABS_ENGINE restored)
    expected, _ = ye.generate(reference_llm, prompt_ids, ye.MAX_TOKENS)
    tokenizer = llm.get_tokenizer()
    num_equal = 0
    for i, (mine, ref) in enumerate(zip(outputs, expected)):
        num_equal += mine == ref
        mark = "equal" if mine == ref else f"DIFFERS (reference: {tokenizer.decode(ref, skip_special_tokens=True)!r})"
        print(f"{i}: {ja[i]} -> {tokenizer.decode(mine, skip_special_tokens=True)!r}  {mark}")
    print(f"\n{num_equal}/{len(outputs)} answers equal to the reference engine's with your {parts.in_play()}"
          "\n(all 320 prompts against vLLM itself: python -m labs.your_engine)")
    log.info("done")
    return 0 if num_equal == len(outputs) else 1


if __name__ == "__main__":
    from labs.core.errors import run_main

    sys.exit(run_main(main))
