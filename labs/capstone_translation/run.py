"""`run_job`: the whole translation job from paths to results, callable from code and notebooks.

Order of work, chosen so mistakes cost seconds, not hours: find the inputs (a typo in a path
fails at once), ask the server (URL, key, model name, context length), read and plan every
document (an undecodable or empty file is reported and skipped, the others go on), then
translate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from labs.capstone_translation.endpoint import Endpoint, connect, token_counter
from labs.capstone_translation.outputs import OutputPaths
from labs.capstone_translation.results import DocumentResult
from labs.capstone_translation.pipeline import (TranslateConfig, is_finished, make_plan,
                                     translate_plans)
from labs.core.models.prompt_format import PromptTemplate
from labs.capstone_translation.source import InputError, find_inputs, output_names, read_document


@dataclass
class JobResult:
    """What a run did.

    Attributes:
        documents: one per input file, in input order.
        endpoint: the server and model used.
        duration_s: wall-clock time of the translation phase.
    """

    documents: list[DocumentResult]
    endpoint: Endpoint
    duration_s: float

    @property
    def ok(self) -> bool:
        """Every document is fully translated (a partial one is not)."""
        return all(d.status in ("translated", "already done") for d in self.documents)

    @property
    def partial(self) -> bool:
        """Nothing failed, but some document was written with untranslated paragraphs kept and flagged."""
        return not any(d.status == "failed" for d in self.documents) and any(
            d.status == "partial" for d in self.documents)

    def advice(self) -> str:
        """What the user should do next, in words ("" when everything is translated).

        Rule: each unfinished state names its next step and what that step does differently: a
        rerun retries rejected chunks with new seeds, one sentence per request; --allow-partial
        writes the document now with the unresolved paragraphs flagged; partial output moved aside
        is named. Tests: tests/test_capstone_translation.py::test_a_rerun_continues_a_rejected_chunks_attempts_and_finishes,
        tests/test_capstone_translation_parts.py::test_a_failed_rerun_moves_an_earlier_partial_output_aside.
        """
        partial = [d for d in self.documents if d.status == "partial"]
        failed = [d for d in self.documents if d.status == "failed"]
        stuck = sum(d.content_failures for d in failed)
        lines = []
        if partial:
            lines.append("PARTIAL: " + "; ".join(
                f"{d.name}: paragraph(s) {', '.join(map(str, d.unresolved))} kept in Japanese, flagged in "
                f"{d.paths.bilingual}" for d in partial) + ". Rerun the same command to retry them (new seeds, one "
                "sentence per request); the files are replaced once every paragraph is translated.")
        if failed:
            lines.append(f"INCOMPLETE: {len(failed)} document(s) have no output (see above and their logs). Rerun the "
                         "same command to resume: finished chunks are skipped, rejected ones are retried with new "
                         "seeds, one sentence per request.")
        moved = [p for d in failed for p in d.moved_aside]
        if moved:
            lines.append("Partial output of an earlier --allow-partial run, moved aside (paragraphs in it are NOT "
                         f"translated): {', '.join(map(str, moved))}.")
        if stuck:
            lines.append(f"{stuck} chunk(s) got no acceptable translation: to get those documents now, with the "
                         "paragraphs kept in Japanese and flagged, add --allow-partial (code: "
                         "TranslateConfig(allow_partial=True)); the exit status is then 3 (partial).")
        return "\n".join(lines)

    @property
    def requests_df(self) -> pd.DataFrame:
        """One row per request sent, with the benchmark harness's latency columns (times in ms).

        The columns come from `StreamTiming.latency_columns`, the harness's own: ttft_ms, tpot_ms
        (vLLM's (e2el - ttft) / (output tokens - 1)), e2el_ms, itl_ms, num_itl.
        """
        rows = [{"document": doc.name, "prompt_len": a.num_prompt_tokens, "output_len": a.num_output_tokens,
                 **a.latency_columns(a.num_output_tokens), "start_time": a.start_time,
                 "accepted": bool(a.verdict and a.verdict.ok)}
                for doc in self.documents for a in doc.attempts]
        return pd.DataFrame(rows)

    def summary(self) -> pd.DataFrame:
        return pd.DataFrame([{"document": d.name, "status": d.status, "chunks": d.num_chunks,
                              "resumed": d.num_chunks_resumed, "requests": len(d.attempts),
                              "output": (str(d.paths.translation) if d.paths and d.status != "failed" else d.error)
                              + (f" (paragraphs {', '.join(map(str, d.unresolved))} NOT TRANSLATED)"
                                 if d.unresolved else "")}
                             for d in self.documents])


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run `coro` to completion, also from inside Jupyter (whose event loop is already running)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def run_job(inputs: list[Path], config: TranslateConfig | None = None, *, base_url: str | None = None,
            model: str | None = None, api_key: str | None = None, preface_file: Path | None = None,
            glossary_file: Path | None = None, examples_file: Path | None = None, encoding: str | None = None,
            max_model_len: int | None = None) -> JobResult:
    """Translate every input file (or folder of .txt/.md files) into `config.out_dir`.

    Args:
        inputs: files and folders.
        config: the job's knobs (`TranslateConfig`).
        base_url / model / api_key: the server; defaults from VLLM_BASE_URL, VLLM_MODEL,
            VLLM_API_KEY (environment or .env), else the workbook's server and its model.
        preface_file / glossary_file / examples_file: the shared prompt's parts (defaults:
            labs/core/models/data/).
        encoding: force the input encoding (default: UTF-8, else detected Japanese legacy encodings).
        max_model_len: only for servers whose /v1/models does not report it.

    Raises:
        InputError: an input path does not exist.
        ServerUnavailableError / ModelNotServedError: see `labs.capstone_translation.endpoint.connect`.
    """
    config = config or TranslateConfig()
    files = find_inputs(inputs)
    endpoint = connect(base_url, model, api_key, default_max_model_len=max_model_len)
    counter = token_counter(endpoint)
    template = PromptTemplate.load(preface_file, glossary_file, examples_file)
    results, plans, todo, states = [], [], [], []
    for path, name in zip(files, output_names(files)):
        paths = OutputPaths.for_document(config.out_dir, name)
        try:
            doc = read_document(path, name, encoding)
        except InputError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            results.append(DocumentResult(name, path, "failed", error=str(exc), paths=paths))
            continue
        plan = make_plan(doc, template, counter, endpoint, config)
        state = plan.journal(paths.journal).read()  # the one read of this run: the pipeline keeps it current
        status = "already done" if is_finished(plan, paths, state) else "pending"
        result = DocumentResult(name, path, status, len(plan.chunks), paths=paths)
        results.append(result)
        if status == "pending":
            plans.append(plan)
            todo.append(result)
            states.append(state)
    start = time.perf_counter()
    if plans:
        run_sync(translate_plans(plans, todo, endpoint, counter, config, states))
    return JobResult(results, endpoint, time.perf_counter() - start)
