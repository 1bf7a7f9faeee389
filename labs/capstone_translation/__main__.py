"""python -m labs.capstone_translation INPUT... --out DIR: Japanese -> Chinese through a vLLM server.

    make vllm-start-bg                                  # the workbook's server (tiny-phrasebook)
    python -m labs.capstone_translation docs/ --out runs/translate
    python -m labs.capstone_translation book.txt --encoding cp932 --reference ref/   # + chrF against references

Rerunning the same command resumes: finished files and chunks are skipped, and chunks whose
answers were rejected are retried with new seeds, one sentence per request.

Exit status: 0 all translated; 1 some document incomplete or unreadable; 2 a usage or server
problem (the message says what to fix); 3 partial: with --allow-partial, documents were written
with the paragraphs that got no acceptable translation kept in Japanese and flagged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labs.core.errors import run_main
from labs.capstone_translation.pipeline import DEFAULT_OUT_DIR, TranslateConfig
from labs.capstone_translation.request import RetryPolicy

EXIT_PARTIAL = 3  # distinct from 1 (incomplete) and 2 (WorkbookError), so scripts can tell "partial" apart


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m labs.capstone_translation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path, help="Japanese text files or folders of .txt/.md files")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="output folder (default: %(default)s)")
    p.add_argument("--base-url", help="server URL (default: VLLM_BASE_URL, else the workbook's server)")
    p.add_argument("--model", help="served model name (default: VLLM_MODEL, else the server's first model)")
    p.add_argument("--preface-file", type=Path, help="instruction preface (default: labs/core/models/data/preface.txt)")
    p.add_argument("--glossary", type=Path, help="TSV 'ja<TAB>zh' of fixed term translations")
    p.add_argument("--examples", type=Path, help="TSV 'ja<TAB>zh' few-shot paragraph pairs")
    p.add_argument("--encoding", help="input encoding, e.g. cp932 (default: UTF-8, else detected)")
    p.add_argument("--chunk-tokens", type=int, help="source tokens per chunk at most (0: as many as fit; "
                   "default: the model's recommendation, else 1024)")
    p.add_argument("--chunk-paragraphs", type=int, help="paragraphs per chunk at most (0: no limit; "
                   "default: the model's recommendation, else no limit)")
    p.add_argument("--overlap", type=int, default=1, help="paragraphs of context before each chunk")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    p.add_argument("--files-in-flight", type=int, default=4, help="documents worked on at once")
    p.add_argument("--retries", type=int, default=2, help="retries of a rejected answer, with adjusted sampling")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--max-model-len", type=int, help="context length, only if the server does not report it")
    p.add_argument("--reference", type=Path, help="reference translations (file or folder) for chrF")
    p.add_argument("--allow-partial", action="store_true",
                   help="write documents whose chunks got no acceptable translation, with those paragraphs kept in "
                        "Japanese and flagged in the bilingual file and the log (exit status 3)")
    p.add_argument("--term-memory", action="store_true",
                   help="names and terms that finished chunks agree on join later chunks' glossary; chunks run in "
                        "waves of --concurrency (see labs/capstone_translation/memory.py); the log's consistency "
                        "report then covers them too")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from labs.capstone_translation.quality import chrf_table
    from labs.capstone_translation.run import run_job

    args = parse_args(argv)
    auto_or = lambda value: "auto" if value is None else (value or None)  # noqa: E731  (0 means no limit)
    config = TranslateConfig(out_dir=args.out, max_chunk_tokens=auto_or(args.chunk_tokens),
                             max_chunk_paragraphs=auto_or(args.chunk_paragraphs), overlap=args.overlap,
                             concurrency=args.concurrency, max_files_in_flight=args.files_in_flight,
                             retry=RetryPolicy(max_content_retries=args.retries, timeout_s=args.timeout),
                             progress=not args.no_progress, allow_partial=args.allow_partial,
                             term_memory=args.term_memory)
    job = run_job(args.inputs, config, base_url=args.base_url, model=args.model, preface_file=args.preface_file,
                  glossary_file=args.glossary, examples_file=args.examples, encoding=args.encoding,
                  max_model_len=args.max_model_len)
    print(job.summary().to_string(index=False))
    if args.reference:
        print(chrf_table(job, args.reference).to_string(index=False))
    if not job.ok:
        print(job.advice(), file=sys.stderr)
    return 0 if job.ok else EXIT_PARTIAL if job.partial else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
