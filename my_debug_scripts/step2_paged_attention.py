"""Lab 2: PagedAttention, safe to run and step through under a debugger.

Two requests share a prefix; a third arrives after the first finished and hits the prefix cache.
The script prints block tables and free blocks after every engine step.

Run it:   python my_debug_scripts/step2_paged_attention.py   (or F5 "Lab 2: PagedAttention (debug-safe)")

Breakpoints worth setting (justMyCode: false):
  - vllm/v1/core/kv_cache_manager.py  KVCacheManager.get_computed_blocks   prefix-cache lookup by chained block hashes
  - vllm/v1/core/kv_cache_manager.py  KVCacheManager.allocate_slots        new blocks for new tokens; caches full blocks
  - vllm/v1/core/block_pool.py        BlockPool.get_new_blocks             pops the free queue, evicting cached blocks
  - vllm/v1/core/block_pool.py        BlockPool.touch                      a cache hit takes a block back from the free queue
  - vllm/v1/core/kv_cache_manager.py  KVCacheManager.free                  blocks return to the free queue, tail first
"""

# Must run before anything imports vLLM: it decides whether the engine core gets its own process.
from labs.core.debug.safe import prepare_debug_session

log = prepare_debug_session(__file__)

import sys  # noqa: E402


def main() -> int:
    from vllm import SamplingParams

    from labs.core import vllm_internals as vi
    from labs.core.engine import free_llm, make_llm
    from labs.core.live import EngineObserver
    from labs.lab2_paged_attention.paged import token_prompt

    llm = make_llm()
    observer = EngineObserver(llm)
    shared = token_prompt(100, seed=7)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    observer.add_request("A", shared + token_prompt(30, seed=1), params)
    observer.add_request("B", shared + token_prompt(5, seed=2), params)

    def show(obs) -> None:  # type: ignore[no-untyped-def]
        print(observer.describe(obs))
        for rid, block_ids in obs.block_tables.items():
            print(f"    {rid}: {block_ids}")

    observer.run(on_step=show)  # BREAKPOINT in KVCacheManager.allocate_slots, then step here
    log.info("A and B done; free queue head: %s", vi.free_block_ids(llm, 8))

    observer.add_request("C", shared + token_prompt(12, seed=3), params)  # hits the cached prefix
    observer.run(on_step=show)
    cached = observer.outputs["C"].num_cached_tokens
    print(f"C reused {cached} prompt tokens from the prefix cache")
    log.info("C: %d cached tokens", cached)

    free_llm(llm)  # end cleanly: nothing left running when you step out of main()
    return 0


if __name__ == "__main__":
    from labs.core.errors import run_main

    sys.exit(run_main(main))  # a missing model or unsupported setting prints one clear message
