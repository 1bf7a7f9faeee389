"""Lab 8: structured outputs (JSON schema, regex, choice list) through xgrammar, safe to run under a debugger.

Runs the phrasebook prompt under the lab's three constraints and unconstrained, in one batch,
while the scheduler's grammar bitmasks are recorded; prints what each request wrote (and whether
it satisfies its constraint) and, step by step, how many tokens the grammar allowed and which.

Run it:   python my_debug_scripts/step8_structured_outputs.py   (or F5 "Lab 8: structured outputs (debug-safe)")
Debug it: python -m debugpy --listen 127.0.0.1:5678 --wait-for-client my_debug_scripts/step8_structured_outputs.py

Breakpoints worth setting (with "justMyCode": false, as the F5 configurations have it):
  - vllm/v1/structured_output/__init__.py   StructuredOutputManager.grammar_init   the backend is built on first
        use; each grammar is compiled in a thread pool (_create_grammar) while the request waits
  - vllm/v1/structured_output/backend_xgrammar.py  XgrammarBackend.compile_grammar   JSON schema / regex / EBNF
        (the choice list arrives as EBNF, from validate_xgrammar_grammar -> choice_as_grammar)
  - vllm/v1/core/sched/scheduler.py         Scheduler.get_grammar_bitmask   which requests get a row this step
  - vllm/v1/structured_output/__init__.py   StructuredOutputManager.grammar_bitmask   fills one row per request
        (XgrammarGrammar.fill_bitmask -> xgrammar's matcher); inspect self._grammar_bitmask
  - vllm/v1/structured_output/utils.py      apply_grammar_bitmask   rows reordered to the batch, logits -> -inf
  - vllm/v1/core/sched/scheduler.py         Scheduler.update_from_output   the sampled token advances the grammar
        (StructuredOutputManager.accept_tokens)
"""

# Must run before anything imports vLLM: it decides whether the engine core gets its own process.
from labs.core.debug.safe import prepare_debug_session

log = prepare_debug_session(__file__)

import sys  # noqa: E402


def main() -> int:
    from labs.core.engine import free_llm, make_llm
    from labs.lab8_structured_outputs import structured as st

    log.info("building the engine")
    llm = make_llm()  # BREAKPOINT here, then step into LLM.__init__
    tokenizer = llm.get_tokenizer()

    log.info("generating under %d constraints in one batch", len(st.CONSTRAINTS))
    runs = st.run_constrained(llm, max_tokens=st.DEFAULT_MAX_TOKENS)  # BREAKPOINT, step into it
    print(st.summary_table(runs).to_string())
    for name, run in runs.items():
        if len(run.bitmasks):
            print(f"\n{name}: {run.text!r} (finish_reason {run.finish_reason!r})")
            print(st.step_table(run, tokenizer).head(12).to_string())
    log.info("done: %s", {name: run.valid for name, run in runs.items()})

    # End cleanly: free the engine and return, so stepping out of main() does not land in
    # interpreter shutdown code waiting on the engine's threads.
    free_llm(llm)
    return 0


if __name__ == "__main__":
    from labs.core.errors import run_main

    sys.exit(run_main(main))  # a missing model or unsupported setting prints one clear message
