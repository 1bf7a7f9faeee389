"""Resume: finished chunks are journaled as they finish, outputs are written atomically.

The journal of a document is a JSON-lines file: a header naming the plan (a hash of the source,
the chunking, the prompt, the model and the sampling settings), then one line per finished
chunk. Each line goes out in ONE `write` to a file opened with O_APPEND and is fsync'ed, so a
SIGKILL leaves either the whole line or (at worst) a torn last line, which `load` ignores. A
rerun with the same plan skips every journaled chunk; a rerun with a different plan (other
settings, edited source) starts the document over instead of mixing two plans' outputs.

A chunk that got no acceptable answer leaves a failure line (`{"failed_chunk": i,
"next_attempt": n, ...}`): it is not finished, but a rerun reads how many attempts it already
used and continues from there (labs.capstone_translation.request), so reruns try something new.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ChunkRecord:
    """A finished chunk, as journaled.

    Attributes:
        chunk_index: which chunk of the plan.
        translations: one per segment of the chunk.
        num_prompt_tokens / num_output_tokens: from the server's usage.
        latency_s / ttft_s: end-to-end latency and time to first token of the accepted attempt.
        num_attempts: 1 + the retries it took.
        problems: what the rejected attempts had wrong (for the log).
    """

    chunk_index: int
    translations: list[str]
    num_prompt_tokens: int
    num_output_tokens: int
    latency_s: float
    ttft_s: float
    num_attempts: int
    problems: list[str]


@dataclass
class JournalState:
    """What one read of a journal says (read once per document per run, then kept up to date).

    Attributes:
        current: a journal of this plan exists (possibly with nothing finished yet).
        records: the chunks finished under this plan.
        attempts_used: per unfinished chunk, how many attempts earlier runs used on it.
    """

    current: bool
    records: dict[int, ChunkRecord]
    attempts_used: dict[int, int]
    legacy: bool = False  # headed by a legacy id of this plan: `start` rewrites the header


class Journal:
    """One document's journal file (see the module docstring)."""

    def __init__(self, path: Path, plan_id: str, legacy_ids: tuple[str, ...] = ()) -> None:
        self.path = path
        self.plan_id = plan_id
        self.legacy_ids = legacy_ids  # ids the same plan had in earlier versions (still resumed)
        self.legacy = False

    def _entries(self) -> list[dict[str, Any]] | None:
        """Every intact line after the header, or None when there is no journal of this plan."""
        if not self.path.exists():
            return None
        with self.path.open(encoding="utf-8") as f:
            lines = f.read().split("\n")
        try:
            header = json.loads(lines[0])
        except (json.JSONDecodeError, IndexError):
            return None
        if header.get("plan_id") not in (self.plan_id, *self.legacy_ids):
            return None
        self.legacy = header.get("plan_id") != self.plan_id
        entries = []
        for line in lines[1:]:
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line from a killed run: that chunk is simply redone
        return entries

    def read(self) -> JournalState:
        """Parse the file once: whether it is of this plan, its finished chunks, its failed chunks' attempts."""
        entries = self._entries()
        records = {e["chunk_index"]: ChunkRecord(**e) for e in entries or [] if "chunk_index" in e}
        used: dict[int, int] = {}
        for e in entries or []:
            if "failed_chunk" in e:
                used[e["failed_chunk"]] = max(used.get(e["failed_chunk"], 0), e["next_attempt"])
        return JournalState(entries is not None, records, used, entries is not None and self.legacy)

    def is_current(self) -> bool:
        """A journal of this plan exists (possibly with nothing finished yet)."""
        return self.read().current

    def load(self) -> dict[int, ChunkRecord]:
        """The chunks already finished under this plan (empty when the plan changed or none are)."""
        return self.read().records

    def attempts_used(self) -> dict[int, int]:
        """Per unfinished chunk, how many attempts earlier runs used on it (its next attempt's number)."""
        return self.read().attempts_used

    def start(self, reset: bool, migrate: bool = False) -> None:
        """Write the header (fresh journal) unless resuming an existing one under the same plan.

        Args:
            reset: start the journal over (another plan's journal, or none).
            migrate: the journal is headed by a legacy id of this plan: rewrite the header with
                the current id and keep every line.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = json.dumps({"plan_id": self.plan_id}) + "\n"
        if reset or not self.path.exists():
            atomic_write_text(self.path, header)
        elif migrate:
            body = self.path.read_text(encoding="utf-8").split("\n", 1)
            atomic_write_text(self.path, header + (body[1] if len(body) > 1 else ""))

    def append(self, record: ChunkRecord) -> None:
        self._append_line(asdict(record))

    def append_failure(self, chunk_index: int, next_attempt: int, problems: str) -> None:
        """Record that a chunk's attempts up to `next_attempt` - 1 were all rejected."""
        self._append_line({"failed_chunk": chunk_index, "next_attempt": next_attempt, "problems": problems})

    def _append_line(self, data: dict[str, Any]) -> None:
        line = (json.dumps(data, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so `path` is always either old or complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
