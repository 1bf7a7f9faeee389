"""`make demo`: generate with the offline default model and show live engine facts.

Prints which model and hardware were chosen (and why), translations of a few phrasebook
sentences, and what the engine did with one prompt: KV blocks, block size, blocks used.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    # vLLM's INFO start-up log is useful when debugging, but buries the demo's output.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from vllm import SamplingParams

    from labs.basic_inference import engine_facts, render_chat, trace_request
    from labs.engine import free_llm, make_llm
    from labs.models.phrasebook import load_phrasebook, translation_messages

    llm = make_llm()
    greedy = SamplingParams(temperature=0.0, max_tokens=64)
    phrasebook = load_phrasebook()
    longest = max(phrasebook, key=lambda e: len(e.ja))  # its prompt spans more than one KV block
    sentences = [e.ja for e in phrasebook[:3]] + [longest.ja]
    outputs = llm.chat([translation_messages(ja) for ja in sentences], greedy, use_tqdm=False)
    print("\n=== Generation (greedy) ===")
    for ja, out in zip(sentences, outputs):
        print(f"  {ja}  ->  {out.outputs[0].text}")

    trace = trace_request(llm, render_chat(llm, translation_messages(longest.ja)), greedy)
    facts = engine_facts(llm, trace)
    print("\n=== Live engine facts ===")
    print(f"  KV cache: {facts.num_kv_blocks} blocks of {facts.block_size} tokens = "
          f"{facts.num_kv_blocks * facts.block_size:,} tokens ({facts.num_free_blocks} blocks free now)")
    print(f"  prompt:   {facts.num_prompt_tokens} tokens -> {facts.num_prompt_blocks} KV block(s)")
    print("\n=== The life of that request ===")
    print(trace.describe())
    free_llm(llm)
    return 0


if __name__ == "__main__":
    from labs.errors import run_main

    sys.exit(run_main(main))
