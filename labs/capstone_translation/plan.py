"""One document's plan: its chunks, the prompt each is sent with, and the id its journal is tied to.

Why its own module: the outputs and the partial-document code read a plan, and the pipeline
makes one; neither side should import the other to know what a plan is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from labs.capstone_translation.chunking import Chunk, ChunkBudget, Segment
from labs.capstone_translation.journal import Journal
from labs.capstone_translation.source import SourceDocument
from labs.core.models.prompt_format import PromptTemplate


@dataclass(frozen=True)
class DocumentPlan:
    doc: SourceDocument
    template: PromptTemplate
    num_shared_tokens: int
    budget: ChunkBudget
    segments: list[Segment]
    chunks: list[Chunk]
    plan_id: str
    max_paragraphs: int | None = None
    num_prompt_tokens: tuple[int, ...] = ()  # per chunk, counted while planning (not inside the request loop)
    legacy_plan_ids: tuple[str, ...] = ()  # ids this plan had in journals of earlier versions

    def journal(self, path: Path) -> Journal:
        return Journal(path, self.plan_id, self.legacy_plan_ids)

    def messages(self, chunk: Chunk) -> list[dict[str, str]]:
        context = [s.text for s in self.segments[chunk.context_start:chunk.start]]
        return self.template.chunk_messages([s.text for s in self.segments[chunk.start:chunk.end]], context)

    def label(self, chunk: Chunk) -> str:
        first, last = self.segments[chunk.start].paragraph_index + 1, self.segments[chunk.end - 1].paragraph_index + 1
        return f"paragraph {first}" if first == last else f"paragraphs {first}-{last}"
