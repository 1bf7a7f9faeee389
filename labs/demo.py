"""`make demo`: generate with the selected model and show live engine facts.

Prints which model and hardware were chosen (and why), a few answers, and what the engine did
with one prompt: KV blocks, block size, blocks used. The prompts suit the model: the phrasebook's
Japanese sentences for `tiny-phrasebook` (trained to translate them), English questions for any
other model, with one sentence saying why. vLLM's start-up notes that nobody can act on are left
out of the output (labs/core/quiet_output.py); `DEBUG=1` shows everything.
"""

from __future__ import annotations

import os
import sys

CHILD_ENV = "WORKBOOK_DEMO_UNFILTERED"  # set in the child process that does the work
MAX_SHOWN = 100  # characters of an answer: a phrasebook translation fits; a random model's 64 tokens of noise do not
# For models that were not trained on the phrasebook. The last one is long enough to span more
# than one KV block (32 tokens on CPU, 16 on GPU) with any tokenizer, for the engine facts below.
ENGLISH_PROMPTS = (
    "What is the capital of France?",
    "Name three primary colours.",
    "Write one sentence about the sea.",
    "A serving engine stores the keys and values of every token it has seen in fixed-size blocks, "
    "and hands a request a new block only when its last one is full. In two sentences, explain why "
    "this wastes less memory than reserving room for the longest possible answer up front.",
)


def demo_messages(knows_phrasebook: bool) -> tuple[list[list[dict[str, str]]], list[str]]:
    """The chats the demo sends, and the short text each one is shown as.

    Args:
        knows_phrasebook: the model was trained on the phrasebook (`labs.core.model_traits`).

    Returns:
        (chats, labels); the last chat is the longest, its prompt spanning more than one KV block.
    """
    from labs.core.models.phrasebook import load_phrasebook, translation_messages

    if knows_phrasebook:
        phrasebook = load_phrasebook()
        longest = max(phrasebook, key=lambda e: len(e.ja))
        sentences = [e.ja for e in phrasebook[:3]] + [longest.ja]
        return [translation_messages(ja) for ja in sentences], sentences
    labels = [p if len(p) < 60 else p[:57] + "..." for p in ENGLISH_PROMPTS]
    return [[{"role": "user", "content": p}] for p in ENGLISH_PROMPTS], labels


def run_demo() -> int:
    """The demo itself: one engine, four answers, then one request traced step by step."""
    # vLLM's INFO start-up log is useful when debugging, but buries the demo's output.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from labs.core.quiet_output import debug_requested, quiet_vllm_warnings

    if not debug_requested():
        quiet_vllm_warnings()
    from vllm import SamplingParams

    from labs.lab1_basic_inference.inference import engine_facts, render_chat, trace_request
    from labs.core.engine import free_llm, make_llm
    from labs.core.model_traits import model_traits

    llm = make_llm(use_tqdm_on_load=False)  # a progress bar for a few MB of weights is noise
    traits = model_traits(llm)
    messages, labels = demo_messages(traits.knows_phrasebook)
    greedy = SamplingParams(temperature=0.0, max_tokens=64)
    outputs = llm.chat(messages, greedy, use_tqdm=False)
    print("\n=== Generation (greedy) ===")
    if not traits.knows_phrasebook:
        print("  English prompts: the phrasebook's Japanese suits only tiny-phrasebook, which was trained to translate it.")
        if traits.random_weights:
            print(f"  {traits.why_unchecked()}")
    for label, out in zip(labels, outputs):
        text = out.outputs[0].text
        print(f"  {label}  ->  {text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + '...'}")

    trace = trace_request(llm, render_chat(llm, messages[-1]), greedy)
    facts = engine_facts(llm, trace)
    print("\n=== Live engine facts ===")
    print(f"  KV cache: {facts.num_kv_blocks} blocks of {facts.block_size} tokens = "
          f"{facts.num_kv_blocks * facts.block_size:,} tokens ({facts.num_free_blocks} blocks free now)")
    print(f"  prompt:   {facts.num_prompt_tokens} tokens -> {facts.num_prompt_blocks} KV block(s)")
    print("\n=== The life of that request ===")
    print(trace.describe())
    free_llm(llm)
    return 0


def main() -> int:
    """Run the demo in a child process whose unactionable start-up notes are filtered out (unless DEBUG=1)."""
    from labs.core.quiet_output import debug_requested

    if os.environ.get(CHILD_ENV) or debug_requested():
        from labs.core.errors import run_main

        return run_main(run_demo)
    from labs.core.quiet_output import run_filtered

    return run_filtered([sys.executable, "-m", "labs.demo"], {**os.environ, CHILD_ENV: "1"})


if __name__ == "__main__":
    sys.exit(main())
