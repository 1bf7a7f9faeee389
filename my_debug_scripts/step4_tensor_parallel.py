"""Lab 4: tensor parallelism, two real ranks, safe to run and to debug one rank per debugger.

Runs the workbook's from-scratch Megatron layers (labs/lab4_tensor_parallel/) on 2 processes: every
attention, MLP and block of tiny-phrasebook on a phrasebook prompt, compared with transformers'
Qwen2 in this process, with the all-reduces counted. `--vllm` then runs real vLLM with
tensor_parallel_size=2 and compares its greedy tokens with one worker's.

Run it:   python my_debug_scripts/step4_tensor_parallel.py [--vllm | --vllm-only]
Debug the ranks (F5 "Lab 4: tensor parallel (ranks wait for a debugger)", then the compound
"Lab 4: attach to tensor-parallel ranks 0 and 1"): WORKBOOK_DEBUG_RANKS=1 makes rank r listen on
127.0.0.1:5679+r and wait for its debugger (WORKBOOK_DEBUG_BASE_PORT moves the ports;
WORKBOOK_DEBUG_WAIT=0 listens without waiting).
Debug vLLM's OWN workers (F5 "Lab 4: vLLM's TP workers wait for a debugger", then the same
compound): WORKBOOK_DEBUG_VLLM_WORKERS=1 makes each worker of the TP=2 engine listen on the same
ports, through the workbook's vLLM plugin (labs/core/debug/vllm_workers.py).
Stop the launch session to end a run: each rank's port closes with its rank (its debug adapter runs
in-process), so the next launch can listen again; a port another process still holds stops the
launch with one line naming that process and how to end it (`kill <pid>`).

Breakpoints worth setting (justMyCode: false):
  - labs/lab4_tensor_parallel/comm.py     CountingAllReduce.__call__ (the "BREAKPOINT" line)   both ranks stop; `rank` differs
  - labs/lab4_tensor_parallel/layers.py   RowParallelLinear.forward    the partial sum each rank holds before the reduce
  - labs/lab4_tensor_parallel/layers.py   TPQwen2Attention.forward     this rank's heads only (num_heads, num_kv_heads)
  - vllm/distributed/communication_op.py  tensor_model_parallel_all_reduce   vLLM's own reduce (in its workers:
    --vllm-only with WORKBOOK_DEBUG_VLLM_WORKERS=1; evaluate torch.distributed.get_rank() to tell them apart)
"""

# Must run before anything imports vLLM: it decides whether the engine core gets its own process.
from labs.core.debug.safe import prepare_debug_session

log = prepare_debug_session(__file__)

import sys  # noqa: E402


def main() -> int:
    if "--vllm-only" in sys.argv[1:]:
        return compare_vllm_tp()
    from labs.core.models import resolve_model
    from labs.lab4_tensor_parallel import checks

    model_dir = resolve_model("tiny-phrasebook").path  # the from-scratch layers need a tied Qwen2 checkpoint
    token_ids = checks.phrasebook_prompt_ids(model_dir)
    log.info("prompt: %d tokens; starting 2 ranks", len(token_ids))
    ref, rank_outputs = checks.run_equivalence(model_dir, token_ids, world_size=2)  # BREAKPOINT: ranks are running
    for row in checks.max_abs_diff(rank_outputs, ref):
        print(f"layer {row['layer']} {row['module']:<9} max |TP - 1 process| = {row['max |TP - 1 process|']:.2e}   "
              f"all-reduces per rank: {row['all-reduces per rank']}")
    logits_diff = max((out["logits"] - ref.logits).abs().max().item() for out in rank_outputs)
    print(f"whole model: {rank_outputs[0]['reduces']['model']} all-reduces per rank "
          f"({', '.join(rank_outputs[0]['model_call_sites'][:3])}, ...); max |logits diff| = {logits_diff:.2e}")
    log.info("from-scratch TP done: %d all-reduces per rank", rank_outputs[0]["reduces"]["model"])

    if "--vllm" in sys.argv[1:]:
        return compare_vllm_tp()
    log.info("done")
    return 0


def compare_vllm_tp() -> int:
    """Real vLLM, TP=2 then TP=1 (each engine freed before the next starts): the same greedy tokens?"""
    import os

    from labs.lab4_tensor_parallel.vllm_tp import run_tp
    from labs.core.debug.vllm_workers import WORKER_DEBUG_ENV

    tp2 = run_tp(2)  # with WORKBOOK_DEBUG_VLLM_WORKERS=1 its two workers wait for debuggers here
    os.environ.pop(WORKER_DEBUG_ENV, None)  # only the TP=2 workers are debugged, not TP=1's single worker
    tp1 = run_tp(1)
    same = tp1["token_ids"] == tp2["token_ids"]
    print(f"vLLM greedy tokens, TP=2 vs TP=1: {'identical' if same else 'DIFFERENT'} "
          f"({len(tp1['token_ids'])} prompts); TP=2 started in {tp2['start_s']:.0f} s")
    log.info("vLLM TP=2 == TP=1: %s", same)
    log.info("done")
    return 0 if same else 1


if __name__ == "__main__":  # required: the ranks are spawned processes that import this file
    from labs.core.errors import run_main

    sys.exit(run_main(main))
