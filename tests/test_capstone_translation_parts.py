"""The capstone's parts that need no server: input decoding, paragraphs, chunk plans, prompt, checks, journal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labs.capstone_translation.checks import check_answer, paragraph_problems
from labs.capstone_translation.chunking import ContextTooSmallError, make_segments, plan_chunks, source_budget
from labs.capstone_translation.journal import ChunkRecord, Journal
from labs.core.models.prompt_format import OutputFormatError, PromptTemplate, parse_numbered, strip_reasoning
from labs.capstone_translation.source import InputError, find_inputs, output_names, read_document, split_paragraphs

JA = "推論エンジンはキャッシュを使って処理を速くします。\n\nサーバーを再起動しました。\n"


# --- reading input ------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["cp932", "euc_jp", "shift_jis"])
def test_legacy_japanese_encodings_are_detected_not_garbled(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "doc.txt"
    path.write_bytes(JA.encode(encoding))
    doc = read_document(path)
    assert doc.paragraphs == ("推論エンジンはキャッシュを使って処理を速くします。", "サーバーを再起動しました。")
    assert doc.encoding in ("cp932", "euc_jp")


def test_utf8_with_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "doc.txt"
    path.write_bytes(b"\xef\xbb\xbf" + JA.replace("\n", "\r\n").encode())
    doc = read_document(path)
    assert doc.encoding == "utf-8" and doc.paragraphs[0].startswith("推論")


def test_undecodable_file_says_so_and_how_to_fix(tmp_path: Path) -> None:
    path = tmp_path / "binary.txt"
    path.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(InputError, match=r"not UTF-8.*--encoding"):
        read_document(path)


def test_forced_wrong_encoding_fails_loudly(tmp_path: Path) -> None:
    path = tmp_path / "doc.txt"
    path.write_bytes(JA.encode("cp932"))
    with pytest.raises(InputError, match="cannot be read as utf-8"):
        read_document(path, encoding="utf-8")


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(" \n\n  \n", encoding="utf-8")
    with pytest.raises(InputError, match="empty"):
        read_document(path)


def test_paragraph_conventions() -> None:
    # blank-line separated: wrapped lines are joined without a space (Japanese has none)
    assert split_paragraphs("一行目の\n続き。\n\n二段落目。") == ("一行目の続き。", "二段落目。")
    # no blank lines at all: one paragraph per line
    assert split_paragraphs("一。\n二。\n三。") == ("一。", "二。", "三。")


def test_find_inputs_and_unique_names(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "doc.txt").write_text("一。", encoding="utf-8")
    (tmp_path / "a" / "notes.bin").write_bytes(b"\0")
    files = find_inputs([tmp_path])
    assert [f.name for f in files] == ["doc.txt", "doc.txt"]
    assert output_names(files) == ["a_doc", "b_doc"]
    with pytest.raises(InputError, match="no such file"):
        find_inputs([tmp_path / "missing.txt"])


# --- prompt and parsing -------------------------------------------------------------------------

def test_shared_prefix_is_identical_for_every_chunk() -> None:
    template = PromptTemplate.load().for_document(JA)
    first = template.chunk_messages(["一。", "二。"])
    second = template.chunk_messages(["三。"], context=["二。"])
    shared = template.shared_messages()
    assert first[:len(shared)] == second[:len(shared)] == shared
    assert "推論エンジン = 推理引擎" in shared[0]["content"]
    assert "パスポート" not in shared[0]["content"], "only the document's own glossary terms are injected"


def test_parse_numbered() -> None:
    assert parse_numbered("<think>hmm</think>\n[1] 一。\n[2] 二。", 2) == ["一。", "二。"]
    assert parse_numbered("只有一段。", 1) == ["只有一段。"]
    with pytest.raises(OutputFormatError, match=r"\[1\]..\[3\]"):
        parse_numbered("[1] 一。\n[3] 三。", 3)
    with pytest.raises(OutputFormatError, match="before"):
        parse_numbered("Sure! Here it is:\n[1] 一。\n[2] 二。", 2)
    assert strip_reasoning("<think>unfinished") == ""


def test_checks_catch_what_models_do_wrong() -> None:
    assert paragraph_problems("サーバーを再起動しました。", "服务器已经重启了。") == []
    assert paragraph_problems("サーバーを再起動しました。", "") == ["empty translation"]
    assert "repetition loop" in paragraph_problems("再起動しました。", "重启了重启了重启了重启了重启了重启了")
    # what tiny-phrasebook once did: ran on past its translation and repeated the last clause
    assert any("repeated phrase" in p for p in paragraph_problems("キャッシュに保存された結果を再利用します。",
                                                                   "重复利用保存在缓存里的结果。缓存里的结果。"))
    assert paragraph_problems("ありがとう、ありがとう。", "谢谢，谢谢。") == [], "short repeats are normal speech"
    assert paragraph_problems("パスポートを見せてください。パスポートを見せてください。",
                              "请出示您的护照。请出示您的护照。") == [], "a sentence the source says twice"
    assert any("repeated phrase" in p for p in paragraph_problems("パスポートを見せてください。パスポートを見せてください。",
                                                                   "请出示您的护照。请出示您的护照。请出示您的护照。")), \
        "the source says it twice, the translation three times"
    dashes = "――――――――――"
    assert any("repeated phrase '缓存里的结果。'" in p for p in paragraph_problems(
        f"第一章{dashes}キャッシュに保存された結果を再利用します。", f"第一章{dashes}重复利用保存在缓存里的结果。缓存里的结果。")), \
        "a dash line in the source does not excuse a repeated clause"
    assert paragraph_problems(f"第一章{dashes}結果を再利用します。", f"第一章{dashes}重复利用结果。") == [], \
        "a dash line copied through is faithful"
    assert "repetition loop" in paragraph_problems("結果を再利用します。", f"{dashes}重复利用结果。"), \
        "a symbol run the source lacks"
    assert any("untranslated" in p for p in paragraph_problems("再起動しました。", "サーバーを再起動しました"))
    assert any("echoed" in p for p in paragraph_problems("サーバーを再起動しました。", "サーバーを再起動しました。服务器已经重启了。"))
    verdict = check_answer("[1] 服务器已经重启了。", ["サーバーを再起動しました。"], "length")
    assert not verdict.ok and "cut off" in verdict.problems[0]
    assert check_answer("[1] 一。\n[2] 二。", ["一。", "二。"], "stop").ok


# --- chunk planning -----------------------------------------------------------------------------

def test_whole_document_when_it_fits_else_chunks_within_budget() -> None:
    whole = source_budget(2048, 200, 300, max_chunk_tokens=1024, output_ratio=1.5, overlap=1)
    assert whole.whole_document
    budget = source_budget(2048, 200, 5000, max_chunk_tokens=None, output_ratio=1.5, overlap=1)
    assert not budget.whole_document
    # prompt + context + source + reserved output must fit in the context
    assert 200 + 16 + budget.max_context_tokens + budget.max_source_tokens * 2.5 <= 2048
    with pytest.raises(ContextTooSmallError, match="too small"):
        source_budget(256, 250, 5000, max_chunk_tokens=None, output_ratio=1.5, overlap=1)


def test_plan_covers_every_paragraph_once_with_overlap_context() -> None:
    paragraphs = tuple(f"段落{i}。" * (1 + i % 3) for i in range(12))
    count = len  # one token per character is enough to test the packing
    budget = source_budget(200, 60, sum(map(count, paragraphs)), max_chunk_tokens=15, output_ratio=1.5, overlap=1)
    segments = make_segments(paragraphs, count, budget.max_source_tokens)
    chunks = plan_chunks(segments, budget, overlap=1)
    assert len(chunks) > 1
    covered = [i for c in chunks for i in range(c.start, c.end)]
    assert covered == list(range(len(segments))), "each segment translated exactly once, in order"
    for chunk in chunks:
        assert sum(s.num_tokens for s in segments[chunk.start:chunk.end]) <= budget.max_source_tokens or chunk.end - chunk.start == 1
        assert chunk.context_start == max(0, chunk.start - 1) or segments[chunk.start - 1].num_tokens > budget.max_context_tokens


def test_overlong_paragraph_is_cut_at_sentence_ends() -> None:
    paragraph = "一文目です。二文目です！三文目ですか？"
    segments = make_segments((paragraph,), len, max_tokens=8)
    assert [s.text for s in segments] == ["一文目です。", "二文目です！", "三文目ですか？"]
    assert {s.paragraph_index for s in segments} == {0}


# --- journal ------------------------------------------------------------------------------------

def test_journal_survives_a_torn_last_line_and_rejects_another_plan(tmp_path: Path) -> None:
    path = tmp_path / "doc.jsonl"
    journal = Journal(path, "plan-a")
    journal.start(reset=True)
    journal.append(ChunkRecord(0, ["一。"], 10, 3, 0.1, 0.05, 1, []))
    journal.append(ChunkRecord(1, ["二。"], 10, 3, 0.1, 0.05, 2, ["[1] empty translation"]))
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"chunk_index": 2})[:9])  # what a SIGKILL mid-write could leave
    assert sorted(Journal(path, "plan-a").load()) == [0, 1]
    assert Journal(path, "plan-b").load() == {}, "a journal of another plan must not be reused"


def test_paragraph_limit_and_the_models_recommendation(tmp_path: Path) -> None:
    from labs.capstone_translation.pipeline import DEFAULT_CHUNK_TOKENS, recommended_chunking

    paragraphs = tuple(f"段落{i}。" for i in range(5))
    budget = source_budget(2048, 200, 30, max_chunk_tokens=1024, output_ratio=1.5, overlap=1,
                           whole_document_allowed=False)
    assert not budget.whole_document and budget.max_context_tokens > 0
    chunks = plan_chunks(make_segments(paragraphs, len, budget.max_source_tokens), budget, overlap=1, max_paragraphs=1)
    assert [(c.start, c.end, c.context_start) for c in chunks] == [(0, 1, 0), (1, 2, 0), (2, 3, 1), (3, 4, 2), (4, 5, 3)]
    (tmp_path / "build_info.json").write_text(json.dumps({"capstone": {"max_chunk_paragraphs": 1}}))
    assert recommended_chunking(str(tmp_path)) == (DEFAULT_CHUNK_TOKENS, 1)
    assert recommended_chunking(None) == (DEFAULT_CHUNK_TOKENS, None), "a model that records nothing"


def test_token_counts_per_file_for_planning(tmp_path: Path, model_path: Path) -> None:
    """`python -m labs.capstone_translation.tokens`: counts with the model's tokenizer, offline, and the chunk plan it implies."""
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from labs.capstone_translation.tokens import count_tokens
    from labs.capstone_translation.samples import sample_paragraphs, write_samples

    paths = write_samples(tmp_path, ["inference_notes", "travel_diary"])
    (tmp_path / "sjis.txt").write_bytes(paths[0].read_text(encoding="utf-8").encode("shift_jis"))
    table = count_tokens([tmp_path], "tiny-phrasebook").set_index("file")
    tok = AutoTokenizer.from_pretrained(model_path)
    ja, _ = sample_paragraphs("inference_notes")
    row = table.loc[str(paths[0])]
    assert row["tokens"] == len(tok("\n\n".join(ja), add_special_tokens=False)["input_ids"])
    assert row["paragraphs"] == len(ja) and row["chunks"] >= 1
    assert table.loc[str(tmp_path / "sjis.txt"), "encoding"] == "cp932"
    assert table.loc[str(tmp_path / "sjis.txt"), "tokens"] == row["tokens"], "same text, whatever its encoding"
    out = subprocess.run([sys.executable, "-m", "labs.capstone_translation.tokens", str(tmp_path), "-m", "tiny-phrasebook"],
                         capture_output=True, text=True, check=True).stdout
    assert "inference_notes.txt" in out and f"total: {int(table['tokens'].sum())} tokens in 3 files" in out


def test_a_failed_chunks_attempts_are_journaled_so_a_rerun_continues_them(tmp_path: Path) -> None:
    """The journal says how many attempts a chunk used; a torn line or another plan says nothing."""
    path = tmp_path / "doc.jsonl"
    journal = Journal(path, "plan-a")
    journal.start(reset=True)
    journal.append(ChunkRecord(0, ["一。"], 10, 3, 0.1, 0.05, 1, []))
    journal.append_failure(1, 3, "no acceptable translation after 3 attempts")
    journal.append_failure(1, 6, "no acceptable translation after 3 attempts")
    assert Journal(path, "plan-a").attempts_used() == {1: 6}
    assert sorted(Journal(path, "plan-a").load()) == [0], "a failure is not a finished chunk"
    journal.start(reset=not journal.is_current())
    assert Journal(path, "plan-a").attempts_used() == {1: 6}, "resuming keeps the failure lines"
    assert Journal(path, "plan-b").attempts_used() == {} and not Journal(path, "plan-b").is_current()


def test_attempts_of_later_runs_sample_differently_within_bounds() -> None:
    from labs.capstone_translation.request import MAX_RETRY_TEMPERATURE, sampling_for_attempt

    first_run = [sampling_for_attempt(n, 0.0) for n in range(3)]
    second_run = [sampling_for_attempt(n, 0.0) for n in range(3, 6)]
    assert first_run[0] == {"temperature": 0.0}, "the first attempt ever is greedy: reproducible"
    assert not any(s in first_run for s in second_run), "a rerun must not replay the first run's attempts"
    assert all(s["temperature"] <= MAX_RETRY_TEMPERATURE for s in first_run[1:] + second_run)


def test_partial_document_keeps_the_source_and_flags_it(tmp_path: Path) -> None:
    from labs.capstone_translation.outputs import OutputPaths, UNTRANSLATED_FLAG, bilingual_markdown, write_outputs

    paths = OutputPaths.for_document(tmp_path, "doc")
    write_outputs(paths, "doc.txt", ["一。", "二。"], ["一。", "二。"], {0: "repeated phrase '一一'"})
    bilingual = paths.bilingual.read_text(encoding="utf-8")
    assert f"| 1 | 一。 | **{UNTRANSLATED_FLAG}**: repeated phrase '一一'<br>一。 |" in bilingual
    assert "| 2 | 二。 | 二。 |" in bilingual and "paragraph(s) 1 got no acceptable translation" in bilingual
    assert "Partial" not in bilingual_markdown("t", ["一。"], ["1."]), "a complete document carries no flag"


def test_fresh_out_dir_empties_its_own_folder_and_moves_anything_else_aside(tmp_path: Path) -> None:
    from labs.capstone_translation.outputs import fresh_out_dir

    out = tmp_path / "measure"
    assert fresh_out_dir(out) is None and out.is_dir()
    (out / ".journal").mkdir()
    (out / ".journal" / "doc.jsonl").write_text("{}\n")
    assert fresh_out_dir(out) is None and [p.name for p in out.iterdir()] == [".emptied-before-each-run"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "book_zh.txt").write_text("hours of work", encoding="utf-8")
    moved = fresh_out_dir(mine)
    assert moved is not None and (moved / "book_zh.txt").read_text(encoding="utf-8") == "hours of work"
    with pytest.raises(NotADirectoryError, match="is a file"):
        fresh_out_dir(moved / "book_zh.txt")


# --- the pipeline with a fake model (no server) -------------------------------------------------

def fake_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reject: set[str], allow_partial: bool = False,
             **config_kw: object):
    """Run the real pipeline on a 3-paragraph document; the fake model 'translates' by prefixing
    "译", and rejects every paragraph in `reject`. Returns (job result, number of journal parses)."""
    from labs.capstone_translation import pipeline, run
    from labs.capstone_translation.endpoint import Endpoint, TokenCounter
    from labs.capstone_translation.journal import Journal
    from labs.capstone_translation.remedy import ChunkOutcome
    from labs.capstone_translation.request import Attempt, NoAcceptableAnswerError

    async def fake_translate(client, model, request, temperature, retry, first_attempt):  # noqa: ANN001, ANN202
        sources = [s.text for s in request.segments]
        attempt = Attempt(text="x", number=first_attempt)
        if set(sources) & reject:
            raise NoAcceptableAnswerError("no acceptable translation after 1 attempt", [attempt])
        return ChunkOutcome(["译" + s for s in sources], [attempt], [attempt], False)

    parses = []
    entries = Journal._entries
    monkeypatch.setattr(Journal, "_entries", lambda self: parses.append(self.path) or entries(self))
    monkeypatch.setattr(pipeline, "translate_planned_chunk", fake_translate)
    counter = TokenCounter(len, lambda messages: sum(len(m["content"]) for m in messages), "len")
    monkeypatch.setattr(run, "connect", lambda *a, **k: Endpoint("http://127.0.0.1:9", "fake", 4096, None, None))
    monkeypatch.setattr(run, "token_counter", lambda endpoint: counter)
    doc = tmp_path / "doc.txt"
    doc.write_text("一です。\n\n二です。\n\n三です。\n", encoding="utf-8")
    config = pipeline.TranslateConfig(out_dir=tmp_path / "out", progress=False, max_chunk_paragraphs=1,
                                      allow_partial=allow_partial, **config_kw)
    return run.run_job([doc], config), len(parses)


def test_the_journal_is_read_once_per_document_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job, parses = fake_job(tmp_path, monkeypatch, reject={"二です。"})
    assert job.documents[0].status == "failed" and parses == 1
    job, parses = fake_job(tmp_path, monkeypatch, reject=set())
    doc = job.documents[0]
    assert doc.status == "translated" and doc.num_chunks_resumed == 2 and parses == 1
    assert doc.paths.translation.read_text(encoding="utf-8") == "译一です。\n\n译二です。\n\n译三です。\n"
    job, parses = fake_job(tmp_path, monkeypatch, reject=set())
    assert job.documents[0].status == "already done" and parses == 1


def test_the_ebook_holds_every_paragraph_and_flags_the_untranslated(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`<name>_zh.epub`, read back with ebooklib: the translation's paragraphs in order, a kept
    Japanese paragraph flagged as in the bilingual file; a folder finished before e-books existed
    gets its e-book from the journal on the next run, without a request."""
    from labs.capstone_translation.epub import read_epub_paragraphs
    from labs.capstone_translation.outputs import UNTRANSLATED_FLAG

    job, _ = fake_job(tmp_path, monkeypatch, reject={"二です。"}, allow_partial=True)
    doc = job.documents[0]
    paragraphs = read_epub_paragraphs(doc.paths.epub)
    assert paragraphs[0] == "译一です。" and paragraphs[2] == "译三です。"
    assert paragraphs[1].startswith(UNTRANSLATED_FLAG) and paragraphs[1].endswith("\n二です。")
    job, _ = fake_job(tmp_path, monkeypatch, reject=set())
    doc = job.documents[0]
    assert read_epub_paragraphs(doc.paths.epub) == ["译一です。", "译二です。", "译三です。"]
    doc.paths.epub.unlink()  # as in a folder translated by an earlier version of the workbook
    job, _ = fake_job(tmp_path, monkeypatch, reject={"一です。", "二です。", "三です。"})  # any request would fail
    doc = job.documents[0]
    assert doc.status == "translated" and doc.num_chunks_resumed == 3
    assert read_epub_paragraphs(doc.paths.epub) == ["译一です。", "译二です。", "译三です。"]


def test_a_failed_rerun_moves_an_earlier_partial_output_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--allow-partial writes a partial document; a rerun without it that still fails must not leave
    that `_zh.txt` in place (it looks finished) while saying "no output": it is moved aside, not deleted."""
    job, _ = fake_job(tmp_path, monkeypatch, reject={"二です。"}, allow_partial=True)
    doc = job.documents[0]
    assert doc.status == "partial" and doc.unresolved == [2]
    partial_text = doc.paths.translation.read_text(encoding="utf-8")
    assert partial_text == "译一です。\n\n二です。\n\n译三です。\n"
    job, _ = fake_job(tmp_path, monkeypatch, reject={"二です。"})
    doc = job.documents[0]
    assert doc.status == "failed" and not doc.paths.translation.exists() and not doc.paths.bilingual.exists()
    assert [p.name.split(".partial-")[0] for p in doc.moved_aside] == ["doc_zh", "doc_bilingual", "doc_zh"]
    assert [p.suffix for p in doc.moved_aside] == [".txt", ".md", ".epub"] and not doc.paths.epub.exists()
    assert doc.moved_aside[0].read_text(encoding="utf-8") == partial_text
    assert "no output" in job.advice() and str(doc.moved_aside[0]) in job.advice()
    assert "moved aside" in doc.paths.log.read_text(encoding="utf-8")
    job, _ = fake_job(tmp_path, monkeypatch, reject={"二です。"})
    assert job.documents[0].moved_aside == [], "nothing partial left to move"
    job, _ = fake_job(tmp_path, monkeypatch, reject=set())
    assert job.documents[0].status == "translated" and job.advice() == ""


def test_changing_retries_resumes_and_journals_of_the_old_plan_id_are_resumed(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from labs.capstone_translation.request import RetryPolicy

    fake_job(tmp_path, monkeypatch, reject={"二です。"})
    job, _ = fake_job(tmp_path, monkeypatch, reject=set(), retry=RetryPolicy(max_content_retries=0))
    assert job.documents[0].status == "translated" and job.documents[0].num_chunks_resumed == 2
    path = tmp_path / "legacy.jsonl"
    old = Journal(path, "old-id")
    old.start(reset=True)
    old.append(ChunkRecord(0, ["一。"], 10, 3, 0.1, 0.05, 1, []))
    old.append_failure(1, 3, "rejected")
    journal = Journal(path, "new-id", legacy_ids=("old-id",))
    state = journal.read()
    assert state.current and state.legacy and sorted(state.records) == [0] and state.attempts_used == {1: 3}
    journal.start(reset=not state.current, migrate=state.legacy)
    assert json.loads(path.read_text(encoding="utf-8").split("\n")[0]) == {"plan_id": "new-id"}
    assert Journal(path, "new-id").read().attempts_used == {1: 3} and sorted(Journal(path, "new-id").load()) == [0]


# --- term memory ----------------------------------------------------------------------------------

def test_candidates_and_learned_terms() -> None:
    from labs.capstone_translation.memory import candidate_terms, consistency, learn_terms
    from labs.capstone_translation.samples import sample_paragraphs

    assert candidate_terms("田中さんは「推論」のサーバーとメモリ・キャッシュを見た。") == \
        ["サーバー", "メモリ・キャッシュ", "田中", "推論"]
    ja, zh = sample_paragraphs("inference_notes")
    assert learn_terms(list(zip(ja, zh)), {"推論エンジン", "サーバー"}) == \
        {"メモリ": "内存", "キャッシュ": "缓存", "モデル": "模型", "リクエスト": "请求"}
    assert learn_terms(list(zip(ja[:3], zh[:3])), set()) == {}, "each term seen once: nothing agreed on yet"
    # a rendering that also shows up where the term is absent is no rendering of it
    assert learn_terms([("サーバーです", "服务器"), ("サーバーだ", "服务器"), ("別", "服务器")], set()) == {}
    rows = consistency({0: ("サーバーa", "服务器a"), 1: ("サーバーb", "主机b"), 2: ("c", "c")}, {"サーバー": "服务器"}, {})
    assert [(r.term, r.chunk_numbers, r.inconsistent) for r in rows] == [("サーバー", (1, 2), (2,))]


def test_term_memory_waves_are_fixed_by_the_plan_so_a_resumed_run_sends_the_same_prompts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk k learns from the waves before its own: a run that failed at chunk 7 and resumed sends
    chunk 7 the glossary an uninterrupted run sends it."""
    from labs.capstone_translation import pipeline, run
    from labs.capstone_translation.endpoint import Endpoint, TokenCounter
    from labs.capstone_translation.remedy import ChunkOutcome
    from labs.capstone_translation.request import Attempt, NoAcceptableAnswerError
    from labs.capstone_translation.results import DocumentResult
    from labs.capstone_translation.samples import sample_paragraphs

    ja, zh = sample_paragraphs("inference_notes")
    answer = dict(zip(ja, zh))
    seen: dict[str, tuple] = {}
    reject: set[str] = set()

    async def fake_translate(client, model, request, temperature, retry, first_attempt):  # noqa: ANN001, ANN202
        sources = [s.text for s in request.segments]
        attempt = Attempt(text="x", number=first_attempt)
        if set(sources) & reject:
            raise NoAcceptableAnswerError("rejected", [attempt])
        seen[sources[0]] = request.template.glossary
        return ChunkOutcome([answer[s] for s in sources], [attempt], [attempt], False)

    monkeypatch.setattr(pipeline, "translate_planned_chunk", fake_translate)
    counter = TokenCounter(len, lambda messages: sum(len(m["content"]) for m in messages), "len")
    monkeypatch.setattr(run, "connect", lambda *a, **k: Endpoint("http://127.0.0.1:9", "fake", 4096, None, None))
    monkeypatch.setattr(run, "token_counter", lambda endpoint: counter)
    doc = tmp_path / "doc.txt"
    doc.write_text("\n\n".join(ja) + "\n", encoding="utf-8")
    no_glossary = tmp_path / "empty.tsv"
    no_glossary.write_text("ja\tzh\n", encoding="utf-8")

    def job(out: str) -> DocumentResult:
        config = pipeline.TranslateConfig(out_dir=tmp_path / out, progress=False, max_chunk_paragraphs=1,
                                          concurrency=3, term_memory=True)
        return run.run_job([doc], config, glossary_file=no_glossary).documents[0]

    assert job("clean").status == "translated"
    clean = dict(seen)
    assert clean[ja[0]] == () and dict(clean[ja[12]]) == {"サーバー": "服务器", "エンジン": "推理引擎",
                                                          "キャッシュ": "缓存", "モデル": "模型"}
    seen.clear()
    reject.add(ja[6])
    assert job("resumed").status == "failed"
    reject.clear()
    seen.clear()
    resumed = job("resumed")
    assert resumed.status == "translated" and resumed.num_chunks_resumed == len(ja) - 1
    assert seen == {ja[6]: clean[ja[6]]}, "the resumed chunk gets the prompt of the uninterrupted run"
    log = resumed.paths.log.read_text(encoding="utf-8")
    assert "learned  サーバー = 服务器: 3/3 chunks; consistent" in log
