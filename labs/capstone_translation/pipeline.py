"""The translation job: plan every document, translate its chunks concurrently, resume, write.

    job = run_job([Path("docs/")], TranslateConfig(out_dir=Path("runs/translate")))

Per document: read and split it (labs.capstone_translation.source), plan chunks from the server's context
(labs.capstone_translation.chunking), skip what the journal says is done (labs.capstone_translation.journal), send the
rest through one bounded pool of requests shared by all documents (labs.capstone_translation.request), and
write the outputs once every chunk is in (labs.capstone_translation.outputs). A chunk that earlier runs could
not translate is retried differently (labs.capstone_translation.remedy); one that still fails leaves the
document "failed", or "partial" when the user allows it (labs.capstone_translation.partial).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from labs.core.paths import RUNS_DIR
from labs.capstone_translation.chunking import Chunk, make_segments, plan_chunks, source_budget
from labs.capstone_translation.endpoint import Endpoint, TokenCounter
from labs.capstone_translation.journal import ChunkRecord, Journal, JournalState
from labs.capstone_translation.memory import report, template_for_wave, wave_of
from labs.capstone_translation.outputs import DocumentLog, OutputPaths, assemble, write_outputs
from labs.capstone_translation.plan import DocumentPlan
from labs.capstone_translation.partial import settle_unfinished
from labs.core.models.prompt_format import PromptTemplate
from labs.capstone_translation.results import DocumentResult
from labs.capstone_translation.remedy import ChunkRequest, translate_planned_chunk
from labs.capstone_translation.request import ChunkFailedError, NoAcceptableAnswerError, RetryPolicy
from labs.capstone_translation.source import SourceDocument

DEFAULT_OUT_DIR = RUNS_DIR / "translate"  # git-ignored
FORMAT_VERSION = 1  # part of every plan id: bump when the prompt or output format changes


@dataclass(frozen=True)
class TranslateConfig:
    """Knobs of a translation job, each with the reason for its default.

    Attributes:
        out_dir: outputs, logs and journals (git-ignored by default).
        max_chunk_tokens: source tokens per chunk at most: ~1k keeps each answer short enough to
            stay faithful and leaves many chunks to run concurrently; None: as large as fits;
            "auto": the model's own recommendation if its folder has one (see
            `recommended_chunking`), else 1024.
        max_chunk_paragraphs: paragraphs per chunk at most (None: tokens decide alone; "auto": the
            model's recommendation, else None).
        overlap: paragraphs of context before each chunk, so pronouns and terms carry over.
        output_ratio: output tokens reserved per source token (JA->ZH needs fewer; 1.5 is safe).
        concurrency: requests in flight at once, over all documents: vLLM batches them, which
            is where the throughput comes from.
        max_files_in_flight: documents open at once (bounds open logs and progress bars).
        temperature: 0 = greedy: reproducible, and what makes a resumed run equal a clean one.
        retry: bounds on retries (see labs.capstone_translation.request); a rerun continues a failed
            chunk's attempts with new seeds, one sentence per request (labs.capstone_translation.remedy).
        progress: show tqdm bars (overall + per file).
        allow_partial: when chunks still have no acceptable answer at the end of the run, write
            the document anyway with their source kept and flagged (status "partial"). Off by
            default so that a `_zh.txt` is a full translation unless the user asked otherwise.
        term_memory: names and terms learned from finished chunks join later chunks' glossary
            (labs.capstone_translation.memory); a document's chunks then run in waves of
            `concurrency`. Off by default: each wave waits for the one before, and the prompt's
            shared prefix grows per wave (less from the prefix cache).
    """

    out_dir: Path = DEFAULT_OUT_DIR
    max_chunk_tokens: int | None | str = "auto"
    max_chunk_paragraphs: int | None | str = "auto"
    overlap: int = 1
    output_ratio: float = 1.5
    concurrency: int = 8
    max_files_in_flight: int = 4
    temperature: float = 0.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    progress: bool = True
    allow_partial: bool = False
    term_memory: bool = False


DEFAULT_CHUNK_TOKENS = 1024


def recommended_chunking(model_dir: str | None) -> tuple[int, int | None]:
    """(max chunk tokens, max chunk paragraphs) the served model was made for, else the defaults.

    Why: the workbook's `tiny-phrasebook` learned the capstone's format on one short paragraph
    per request (with overlap context) and records that in its `build_info.json`
    (`capstone.max_chunk_paragraphs`); a real instruct model records nothing and gets chunks of
    up to `DEFAULT_CHUNK_TOKENS`. Only a server that loaded a local folder can be asked.

    Args:
        model_dir: the model's folder (a server's `root` in /v1/models), or None.
    """
    info = Path(model_dir or "", "build_info.json")
    recorded = json.loads(info.read_text()).get("capstone", {}) if model_dir and info.is_file() else {}
    return int(recorded.get("max_chunk_tokens") or DEFAULT_CHUNK_TOKENS), recorded.get("max_chunk_paragraphs")


def make_plan(doc: SourceDocument, template: PromptTemplate, counter: TokenCounter, endpoint: Endpoint,
              config: TranslateConfig) -> DocumentPlan:
    """Chunks for `doc`, and the id that ties a journal to exactly this plan."""
    template = template.for_document(doc.text)
    auto_tokens, auto_paragraphs = recommended_chunking(endpoint.root)
    max_chunk_tokens = auto_tokens if config.max_chunk_tokens == "auto" else config.max_chunk_tokens
    max_paragraphs = auto_paragraphs if config.max_chunk_paragraphs == "auto" else config.max_chunk_paragraphs
    num_shared = counter.count_messages(template.shared_messages())
    budget = source_budget(endpoint.max_model_len, num_shared, counter.count_text(doc.text),
                           max_chunk_tokens=max_chunk_tokens, output_ratio=config.output_ratio,
                           overlap=config.overlap,
                           whole_document_allowed=max_paragraphs is None or len(doc.paragraphs) <= max_paragraphs)
    segments = make_segments(doc.paragraphs, counter.count_text, budget.max_source_tokens)
    chunks = plan_chunks(segments, budget, config.overlap, max_paragraphs)
    # What the journaled translations depend on. Not the retry count: it bounds how many attempts
    # a run makes, not what an accepted answer is, so changing --retries resumes the document.
    identity = {"format": FORMAT_VERSION, "model": endpoint.model, "temperature": config.temperature,
                "shared": template.shared_messages(), "segments": [(s.paragraph_index, s.text) for s in segments],
                "chunks": [(c.start, c.end, c.context_start) for c in chunks]}
    # the id journals written before that had (retries included, with this run's value): still resumed
    legacy = {**dict(list(identity.items())[:3]), "retries": config.retry.max_content_retries,
              **dict(list(identity.items())[3:])}
    plan_id, legacy_id = (hashlib.sha256(json.dumps(i, ensure_ascii=False).encode()).hexdigest()[:16]
                          for i in (identity, legacy))
    plan = DocumentPlan(doc, template, num_shared, budget, segments, chunks, plan_id, max_paragraphs,
                        legacy_plan_ids=(legacy_id,))
    # Counted here, once, because a counter may be a blocking HTTP call to /tokenize: inside the
    # asyncio request loop it would stall every stream in flight.
    return replace(plan, num_prompt_tokens=tuple(counter.count_messages(plan.messages(c)) for c in chunks))


class Job:
    """Shared state of one run: the server, the request pool, the progress bars."""

    def __init__(self, endpoint: Endpoint, counter: TokenCounter, config: TranslateConfig, total_chunks: int) -> None:
        import openai
        from tqdm.auto import tqdm

        self.endpoint, self.counter, self.config = endpoint, counter, config
        self.client = openai.AsyncOpenAI(base_url=f"{endpoint.base_url}/v1", api_key=endpoint.api_key or "EMPTY",
                                         max_retries=0)  # retries are ours (labs.capstone_translation.request)
        self.requests = asyncio.Semaphore(config.concurrency)
        self.files = asyncio.Semaphore(config.max_files_in_flight)
        self.overall = tqdm(total=total_chunks, desc="all chunks", unit="chunk",
                            disable=not config.progress, position=0)
        self.tqdm = tqdm

    async def chunk(self, plan: DocumentPlan, chunk: Chunk, journal: Journal, state: JournalState,
                    log: DocumentLog, result: DocumentResult, bar: Any, template: PromptTemplate | None = None) -> None:
        first_attempt = state.attempts_used.get(chunk.index, 0)
        segments = plan.segments[chunk.start:chunk.end]
        sources = [s.text for s in segments]
        context = [s.text for s in plan.segments[chunk.context_start:chunk.start]]
        num_prompt_tokens = plan.num_prompt_tokens[chunk.index]
        if template is not None and template != plan.template:  # learned terms: count off the event loop
            num_prompt_tokens = await asyncio.to_thread(self.counter.count_messages,
                                                        template.chunk_messages(sources, context))
        request = ChunkRequest(template or plan.template, context, segments, num_prompt_tokens,
                               self.endpoint.max_model_len, self.config.overlap)
        async with self.requests:
            try:
                outcome = await translate_planned_chunk(self.client, self.endpoint.model, request,
                                                        self.config.temperature, self.config.retry, first_attempt)
            except ChunkFailedError as exc:
                result.attempts += exc.attempts
                if isinstance(exc, NoAcceptableAnswerError):
                    # journaled so that the next run continues the attempt sequence instead of replaying it
                    journal.append_failure(chunk.index, max(a.number for a in exc.attempts) + 1, str(exc))
                log.failed_chunk(chunk.index + 1, len(plan.chunks), plan.label(chunk), sources, exc.attempts, str(exc))
                raise
        result.attempts += outcome.attempts
        kept = outcome.accepted
        kept_ids = {id(a) for a in kept}  # by identity: two attempts may have equal fields
        record = ChunkRecord(chunk.index, outcome.translations, sum(a.num_prompt_tokens for a in kept),
                             sum(a.num_output_tokens for a in kept), round(sum(a.latency for a in kept), 4),
                             round(kept[0].ttft, 4), len(outcome.attempts),
                             [", ".join(a.verdict.problems) for a in outcome.attempts if id(a) not in kept_ids])
        journal.append(record)  # journaled before anything else: from here on it survives a kill
        state.records[chunk.index] = record
        how = (f" (after {first_attempt} in earlier runs)" if first_attempt else "") + (
            ", one sentence per request" if outcome.by_sentence else "")
        log.chunk(chunk.index + 1, len(plan.chunks), plan.label(chunk), context, sources, record,
                  request.max_tokens(sum(s.num_tokens for s in segments)), how)
        bar.update()
        self.overall.update()

    async def document(self, plan: DocumentPlan, result: DocumentResult,
                       state: JournalState | None = None) -> DocumentResult:
        """Translate what the journal lacks and write the outputs.

        Args:
            plan: the document's plan.
            result: its result, filled in here.
            state: its journal as read before this run (None: read it here); it is the only
                read: chunks finished in this run are added to `state.records` as journaled.
        """
        async with self.files:
            paths = result.paths
            journal = plan.journal(paths.journal)
            state = state or journal.read()
            records = state.records
            result.num_chunks_resumed = len(records)
            self.overall.update(len(records))
            journal.start(reset=not state.current, migrate=state.legacy)
            log = DocumentLog(paths.log)
            self.tqdm.write(f"{plan.doc.name}: log {paths.log}")
            log.run_header(run_lines(plan, self.endpoint, self.counter, len(records), len(state.attempts_used)),
                           plan.template.shared_messages(), plan.num_shared_tokens)
            todo = [c for c in plan.chunks if c.index not in records]
            bar = self.tqdm(total=len(plan.chunks), initial=len(records), desc=plan.doc.name[:24], unit="chunk",
                            leave=False, disable=not self.config.progress)
            outcomes = await self.chunks_of(plan, todo, journal, state, log, result, bar)
            bar.close()
            failed = {c.index: o for c, o in zip(todo, outcomes) if isinstance(o, BaseException)}
            if failed:
                settled = settle_unfinished(plan, result, log, failed, self.config.allow_partial, records)
                log.write(report(plan, records, self.config.term_memory))
                return settled
            write_outputs(paths, plan.doc.path.name, list(plan.doc.paragraphs), assemble(plan, records))
            log.write(report(plan, records, self.config.term_memory))
            log.write(f"=== done: {paths.translation} ===")
            result.status = "translated"
            return result


    async def chunks_of(self, plan: DocumentPlan, todo: list[Chunk], journal: Journal, state: JournalState,
                        log: DocumentLog, result: DocumentResult, bar: Any) -> list[Any]:
        """Translate `todo`: all at once, or with term memory in waves that learn from the waves before.

        Returns:
            One outcome per chunk of `todo`, in order: None, or the exception it failed with (one
            failure must not cancel the others).
        """
        if not self.config.term_memory:
            return await asyncio.gather(*(self.chunk(plan, c, journal, state, log, result, bar) for c in todo),
                                        return_exceptions=True)
        outcomes: dict[int, Any] = {}
        taught: dict[str, str] = {}
        for wave in sorted({wave_of(c.index, self.config.concurrency) for c in todo}):
            chunks = [c for c in todo if wave_of(c.index, self.config.concurrency) == wave]
            template, learned = template_for_wave(plan, state.records, wave, self.config.concurrency)
            if learned != taught:
                log.write(f"=== memory: chunks {chunks[0].index + 1}-{chunks[-1].index + 1} get {len(learned)} learned "
                          "term(s) in their glossary: " + ", ".join(f"{ja} = {zh}" for ja, zh in learned.items()))
                taught = learned
            done = await asyncio.gather(*(self.chunk(plan, c, journal, state, log, result, bar, template)
                                          for c in chunks), return_exceptions=True)
            outcomes.update({c.index: o for c, o in zip(chunks, done)})
        return [outcomes[c.index] for c in todo]


def run_lines(plan: DocumentPlan, endpoint: Endpoint, counter: TokenCounter, num_resumed: int,
              num_failed_before: int = 0) -> list[str]:
    b = plan.budget
    mode = ("whole document in one request" if b.whole_document else
            f"{len(plan.chunks)} chunks of <= {b.max_source_tokens} source tokens"
            f"{f' and <= {plan.max_paragraphs} paragraphs' if plan.max_paragraphs else ''}, "
            f"overlap context <= {b.max_context_tokens} tokens")
    return [f"source: {plan.doc.path} ({plan.doc.encoding}), {len(plan.doc.paragraphs)} paragraphs",
            f"server: {endpoint.base_url}  model: {endpoint.model}  max_model_len: {endpoint.max_model_len} "
            f"(from /v1/models)  token counts: {counter.source}",
            f"plan {plan.plan_id}: {mode}; glossary terms in this document: {len(plan.template.glossary)}",
            f"resumed: {num_resumed} of {len(plan.chunks)} chunks already journaled"
            + (f"; {num_failed_before} chunk(s) rejected in earlier runs: retried with new seeds, one sentence "
               "per request" if num_failed_before else "")]


async def translate_plans(plans: list[DocumentPlan], results: list[DocumentResult], endpoint: Endpoint,
                          counter: TokenCounter, config: TranslateConfig,
                          states: list[JournalState] | None = None) -> None:
    job = Job(endpoint, counter, config, sum(len(p.chunks) for p in plans))
    try:
        await asyncio.gather(*(job.document(p, r, s) for p, r, s in zip(plans, results, states or [None] * len(plans))))
    finally:
        job.overall.close()
        await job.client.close()


def is_finished(plan: DocumentPlan, paths: OutputPaths, state: JournalState | None = None) -> bool:
    """Every chunk journaled under this plan and every output written: nothing to do.

    A folder translated before an output existed (the e-book) is finished again from its journal,
    without a request.

    Args:
        plan: the document's plan.
        paths: its outputs.
        state: its journal, already read (None: read it here).
    """
    records = (state or plan.journal(paths.journal).read()).records
    return len(records) == len(plan.chunks) and all(p.exists() for p in paths.documents())


