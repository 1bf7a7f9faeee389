"""Capstone: one sample document translated through the workbook's own vLLM server, the client in this process.

Gets a server the way the capstone notebook does (`labs.capstone_translation.notebook.lab_server`:
the one at VLLM_BASE_URL if it answers, else the workbook's own, started for this script and
stopped when it ends), plans one sample document for it (`make_plan`: the server's
`max_model_len` from /v1/models, its tokenizer) and prints each chunk's prompt tokens and the
`max_tokens` its request will carry, then translates it with the real job (`run_job`), one request
at a time so that stepping through it stays linear, and prints the translation and each request's
timings. The job's own log is `<out>/logs/<document>.log`.

Run it:   python my_debug_scripts/capstone_translation.py        (or F5 "Capstone: translation (debug-safe)")
          LABS_ENGINE=learner python my_debug_scripts/capstone_translation.py   your chunker (exercise.py)
Debug it: python -m debugpy --listen 127.0.0.1:5678 --wait-for-client my_debug_scripts/capstone_translation.py

Breakpoints worth setting (the client runs here; the server is another process: to step through
vLLM's side, attach to a server started under debugpy, my_debug_scripts/README.md "Attach"):
  - labs/capstone_translation/solution.py   source_budget, plan_chunks   the budget from max_model_len
        (exercise.py instead with LABS_ENGINE=learner)
  - labs/capstone_translation/pipeline.py   make_plan     the chunks and each one's prompt tokens
  - labs/capstone_translation/pipeline.py   Job.chunk     one chunk: its ChunkRequest, journaled when accepted
  - labs/capstone_translation/request.py    max_tokens_for   what the context has left for the answer
  - labs/capstone_translation/request.py    stream_once   the streamed request; usage arrives last
  - labs/capstone_translation/request.py    translate_chunk   each answer checked, retried with new sampling
  - labs/capstone_translation/checks.py     check_answer  why an answer is rejected
"""

# Must run first, like every debug script: the script's log goes to its own file under a debugger.
from labs.core.debug.safe import prepare_debug_session

log = prepare_debug_session(__file__)

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

SAMPLE = "inference_notes"  # labs/capstone_translation/samples.py: tiny-phrasebook translates it exactly
SERVER_LOG_DIR = Path(__file__).resolve().parent / ".logs" / "capstone_server"  # git-ignored


def main() -> int:
    from labs.capstone_translation import PromptTemplate, TranslateConfig, connect, make_plan, read_document, run_job
    from labs.capstone_translation.chunking import chunker
    from labs.capstone_translation.endpoint import token_counter
    from labs.capstone_translation.notebook import lab_server
    from labs.capstone_translation.request import max_tokens_for
    from labs.capstone_translation.samples import write_samples
    from labs.core.paths import RUNS_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RUNS_DIR / f"capstone-debug-{time.strftime('%Y%m%d-%H%M%S')}",
                        help="the sample, its translation and the job's logs (default: a new folder under runs/)")
    args = parser.parse_args()

    [path] = write_samples(args.out / "in", [SAMPLE])
    with lab_server(SERVER_LOG_DIR) as server:
        endpoint = connect(server.url, api_key=server.api_key)
        counter = token_counter(endpoint)
        log.info("server %s serves %s, max_model_len %d; token counts: %s", endpoint.base_url, endpoint.model,
                 endpoint.max_model_len, counter.source)
        config = TranslateConfig(out_dir=args.out / "out", concurrency=1, progress=False)
        plan = make_plan(read_document(path), PromptTemplate.load(), counter, endpoint, config)  # BREAKPOINT
        log.info("chunker: %s; budget: %s", chunker().__name__, plan.budget)
        print(f"{path.name}: {len(plan.segments)} segments in {len(plan.chunks)} chunks "
              f"(max_model_len {endpoint.max_model_len}, shared prompt {plan.num_shared_tokens} tokens)")
        for chunk, num_prompt_tokens in zip(plan.chunks, plan.num_prompt_tokens):
            num_source_tokens = sum(s.num_tokens for s in plan.segments[chunk.start:chunk.end])
            print(f"  chunk {chunk.index + 1:>2} {plan.label(chunk):<16} context {chunk.start - chunk.context_start} "
                  f"segment(s), {num_source_tokens:>3} source tokens, prompt {num_prompt_tokens:>4} tokens, max_tokens "
                  f"{max_tokens_for(endpoint.max_model_len, num_prompt_tokens, num_source_tokens)}")

        job = run_job([path], config, base_url=server.url, api_key=server.api_key)  # BREAKPOINT, then Job.chunk
    print(job.summary().to_string(index=False))
    print(job.requests_df[["prompt_len", "output_len", "ttft_ms", "e2el_ms", "accepted"]].to_string())
    [doc] = job.documents
    if doc.status == "translated":
        print(doc.paths.translation.read_text(encoding="utf-8"))
    else:
        print(job.advice())
    log.info("done: %s (job log %s)", doc.status, doc.paths.log)
    return 0 if job.ok else 1


if __name__ == "__main__":
    from labs.core.errors import run_main

    sys.exit(run_main(main))  # a missing model or an unreachable server prints one clear message
