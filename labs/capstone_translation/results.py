"""How one document went: the status a run reports, and the requests it sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from labs.capstone_translation.outputs import OutputPaths
from labs.capstone_translation.request import Attempt


@dataclass
class DocumentResult:
    """How one document went.

    Attributes:
        status: "translated", "already done" (every chunk journaled before this run), "partial"
            (written with `unresolved` paragraphs kept in the source language) or "failed".
        num_chunks_resumed: chunks taken from the journal instead of the server.
        unresolved: paragraph numbers (1-based) kept untranslated in a partial document.
        content_failures: chunks that got no acceptable answer (a rerun or --allow-partial helps).
        attempts: every request this run sent for the document (for timings and plots).
        moved_aside: a failed document's outputs from an earlier partial run, renamed (not deleted).
    """

    name: str
    source: Path
    status: str
    num_chunks: int = 0
    num_chunks_resumed: int = 0
    error: str = ""
    paths: OutputPaths | None = None
    attempts: list[Attempt] = field(default_factory=list)
    unresolved: list[int] = field(default_factory=list)
    content_failures: int = 0
    moved_aside: list[Path] = field(default_factory=list)
