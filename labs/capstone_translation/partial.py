"""A document whose run ended with chunks left: "failed" (nothing written) or "partial".

Why a partial document exists at all: one chunk that no answer passes must not cost the user
the other 149. Why it is opt-in (`TranslateConfig.allow_partial`, `--allow-partial`): a
`_zh.txt` next to a document should mean "translated" unless the user asked for less. A partial
document keeps the source text of its unresolved paragraphs, flags them in the bilingual file
and the log, and has its own status (and exit status 3 from the CLI); it is never reported as
done, and a rerun retries exactly those chunks and replaces the files once all are translated.
A run that ends "failed" moves a partial output of an earlier run aside (renamed, never deleted),
so that no `_zh.txt` is left next to a document reported as having no output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labs.capstone_translation.journal import ChunkRecord
from labs.capstone_translation.outputs import DocumentLog, assemble, move_aside_partial, write_outputs
from labs.capstone_translation.request import NoAcceptableAnswerError

if TYPE_CHECKING:
    from labs.capstone_translation.plan import DocumentPlan
    from labs.capstone_translation.results import DocumentResult


def why_unresolved(exc: NoAcceptableAnswerError) -> str:
    """A one-line reason for a flagged paragraph: how many attempts, and what the last one had wrong.

    Args:
        exc: the chunk's failure, with the attempts this run sent.

    Returns:
        E.g. "2 answer(s) rejected in this run, the last for: [1] repeated phrase '...'".
    """
    last = exc.attempts[-1] if exc.attempts else None
    problems = ", ".join(last.verdict.problems) if last and last.verdict else str(exc)
    return f"{len(exc.attempts)} answer(s) rejected in this run, the last for: {problems}"


def settle_unfinished(plan: DocumentPlan, result: DocumentResult, log: DocumentLog,
                      failed: dict[int, BaseException], allow_partial: bool,
                      records: dict[int, ChunkRecord]) -> DocumentResult:
    """Record how an unfinished document ends, and write it as "partial" when allowed and possible.

    Why only content failures may go partial: a chunk that no answer passed is a fact about
    the text; a dead server or a refused API key is not, and a rerun fixes those.

    Args:
        plan: the document's plan.
        result: its result so far (status, error, unresolved, content_failures and moved_aside
            are set here).
        log: its log, which gets the verdict and what to do next.
        failed: chunk index -> what its request raised.
        allow_partial: write the document with the unresolved chunks' source kept.
        records: the chunks finished so far (earlier runs and this one).

    Returns:
        `result`, with status "failed" or "partial".
    """
    content = {i: e for i, e in failed.items() if isinstance(e, NoAcceptableAnswerError)}
    result.content_failures = len(content)
    result.error = f"{len(failed)} chunk(s) failed: {next(iter(failed.values()))}"
    if not (allow_partial and len(content) == len(failed)):
        result.status = "failed"
        # A failed document has no output: a partial one from an earlier --allow-partial run is
        # moved aside, so the files agree with the status (test: tests/test_capstone_translation_parts.py::
        # test_a_failed_rerun_moves_an_earlier_partial_output_aside).
        result.moved_aside = move_aside_partial(result.paths)
        if result.moved_aside:
            log.write(f"=== the partial output of an earlier run was moved aside: "
                      f"{', '.join(map(str, result.moved_aside))} ===")
        hint = ", or add --allow-partial to write the document now with them kept in Japanese and flagged" \
            if content and not allow_partial else ""
        log.write(f"=== incomplete: {result.error}; finished chunks are journaled. Rerun the same command to retry "
                  f"the rest (new seeds, one sentence per request){hint} ===")
        return result
    reasons = {s.paragraph_index: why_unresolved(content[c.index])
               for c in plan.chunks if c.index in content for s in plan.segments[c.start:c.end]}
    write_outputs(result.paths, plan.doc.path.name, list(plan.doc.paragraphs), assemble(plan, records), reasons)
    result.status, result.unresolved = "partial", [i + 1 for i in sorted(reasons)]
    log.write(f"=== partial: {result.paths.translation} written with paragraph(s) "
              f"{', '.join(map(str, result.unresolved))} kept in Japanese (NOT TRANSLATED, flagged in "
              f"{result.paths.bilingual.name}). Rerun the same command to retry them (new seeds, one sentence per "
              "request); the files are replaced once every paragraph is translated ===")
    return result
