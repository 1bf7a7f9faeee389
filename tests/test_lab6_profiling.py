"""Lab 6 (labs/lab6_profiling/profiling.py) against the real engine: vLLM's profiler, stage timing, roofline, py-spy.

The profiler needs an engine built with `profiler_config`, so it runs in a subprocess
(tests/profiling_support.py, shared with the predictions' tests); stage timing and
the roofline use the session engine; py-spy dumps the session's real server (`vllm_server`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from labs.lab6_profiling import profiling as prof
from labs.core import vllm_internals as vi
from tests.profiling_support import profiled_run


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return profiled_run(tmp_path_factory)


@pytest.mark.engine
def test_vllm_profiler_writes_a_perfetto_trace(profiled: dict[str, Any]) -> None:
    trace_path = Path(profiled["trace_path"])
    assert trace_path.parent == profiled["trace_dir"] and trace_path.name.endswith(".pt.trace.json")
    events = json.loads(trace_path.read_text())["traceEvents"]  # valid JSON, as Perfetto loads it
    timed = [e for e in events if e.get("ph") == "X" and e.get("dur", 0) > 0]
    assert len(timed) > 100, "a few engine steps run hundreds of operators"


@pytest.mark.engine
def test_trace_names_each_engine_step_by_its_prefill_and_decode_work(profiled: dict[str, Any]) -> None:
    steps = prof.annotated_steps(Path(profiled["trace_path"]))
    assert len(steps) >= 4 and (steps["ms"] > 0).all()
    first = steps.iloc[0]
    # All three prompts fit in one step's token budget: the first step prefills every prompt token.
    assert (first.prefill_reqs, first.prefill_tokens, first.decode_reqs) == (3, profiled["num_prompt_tokens"], 0)
    assert (steps.iloc[1:]["decode_tokens"] == 3).all() and (steps.iloc[1:]["prefill_tokens"] == 0).all()


@pytest.mark.engine
def test_top_operators_by_self_cpu_time(profiled: dict[str, Any]) -> None:
    ops = profiled["top_ops"]
    assert ops and all(op["self_cpu_ms"] > 0 and op["calls"] > 0 for op in ops)
    self_ms = [op["self_cpu_ms"] for op in ops]
    assert self_ms == sorted(self_ms, reverse=True)
    assert all(op["self_cpu_ms"] <= op["cpu_total_ms"] + 1e-6 for op in ops)
    assert ops[0]["operator"] in profiled["vllm_table"], "vLLM's own table (sorted the same way) agrees"


@pytest.mark.engine
def test_stage_timing_covers_every_stage_and_restores_the_engine(llm: Any) -> None:
    from vllm import SamplingParams

    sched = vi.scheduler(llm)
    before = vars(sched).get("schedule")  # another test may have wrapped it (record_scheduler_outputs)
    prompts = ["你好", "谢谢", "再见"]
    table = prof.time_stages(llm, prompts, SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))
    rows = table.set_index("stage")
    assert list(table["stage"]) == [*prof.STAGES, "other"]
    assert (rows.loc[list(prof.STAGES), "total_ms"] > 0).all() and (rows.loc[list(prof.STAGES), "calls"] > 0).all()
    assert rows.loc["tokenization", "calls"] == len(prompts)
    assert rows.loc["forward", "calls"] == rows.loc["sampling", "calls"] == 5, "one forward + sample per step"
    assert abs(table["share"].sum() - 1) < 1e-6
    assert vars(sched).get("schedule") is before and "execute_model" not in vars(vi.model_runner(llm))


@pytest.mark.engine
def test_decode_roofline_is_sane(llm: Any, hf_model: Any) -> None:
    from labs.lab1_basic_inference.solution import kv_cache_bytes_per_token

    config = hf_model.config
    # The engine's numbers against the checkpoint's: bf16 weights, K and V of every layer.
    assert vi.model_weight_bytes(llm) == 2 * sum(p.numel() for p in hf_model.parameters())
    assert vi.kv_cache_bytes_per_token(llm) == kv_cache_bytes_per_token(
        config.num_hidden_layers, config.num_key_value_heads, config.hidden_size // config.num_attention_heads, 2)
    bandwidth = prof.measure_memory_bandwidth(num_bytes=64 * 2**20, repeats=5)
    assert bandwidth > 0
    table = prof.decode_roofline(llm, [1, 4], bandwidth, num_decode_steps=6)
    assert (table["step_ms"] > 0).all() and (table["tokens_per_s"] > 0).all()
    assert ((table["fraction_of_bound"] > 0) & (table["fraction_of_bound"] <= 1.5)).all(), table
    assert table["MB_per_step"].is_monotonic_increasing, "more requests read more KV cache"
    assert not vi.scheduler(llm).requests, "every roofline request finished"


@pytest.fixture
def server_pid(vllm_server: Any) -> int:
    """The shared server's API server pid (its engine core is a child process: vLLM's default layout)."""
    assert vllm_server.pid is not None
    return vllm_server.pid


@pytest.mark.server
def test_py_spy_dump_of_a_server_lists_and_explains_its_threads(server_pid: int) -> None:
    dump = prof.py_spy_dump(server_pid)
    if dump.problem and "ptrace" in dump.problem:
        pytest.skip(f"py-spy cannot attach here: {dump.problem}")
    assert dump.problem is None, dump.problem
    by_process = {t.pid for t in dump.threads}
    assert server_pid in by_process and len(by_process) >= 2, "the API server and its engine core process"
    roles = {prof.explain_thread(t) for t in dump.threads}
    assert any(r.startswith("API server: the asyncio event loop") for r in roles), dump.text[-3000:]
    engine_main = [t for t in dump.threads if t.process == "VLLM::EngineCore" and t.thread == "MainThread"]
    assert engine_main and any("_process_input_queue" in f for f in engine_main[0].frames), dump.text[-3000:]
    table = prof.thread_table(dump.threads)
    assert len(table) == len(dump.threads) and "\x1b" not in dump.text


def test_a_worker_inside_a_step_is_not_called_idle() -> None:
    """The idle loop's frames sit below a running step's: the step must win (stacks as py-spy printed them
    for vLLM 0.32.0's worker and engine core, innermost first)."""
    loop = ["WorkerProc.worker_busy_loop (vllm/v1/executor/multiproc_executor.py:1041)",
            "WorkerProc.worker_main (vllm/v1/executor/multiproc_executor.py:944)"]
    idle = prof.ThreadDump(1, "VLLM::Worker", "MainThread", "idle",
                           ["MessageQueue.acquire_read (vllm/distributed/device_communicators/shm_broadcast.py:864)",
                            "MessageQueue.dequeue (vllm/distributed/device_communicators/shm_broadcast.py:971)", *loop])
    stepping = prof.ThreadDump(1, "VLLM::Worker", "MainThread", "active",
                               ["CPUModelRunner.execute_model (vllm/v1/worker/gpu_model_runner.py:3100)",
                                "WorkerProc._execute_worker_rpc (vllm/v1/executor/multiproc_executor.py:1055)", *loop])
    core = prof.ThreadDump(2, "VLLM::EngineCore", "MainThread", "idle",
                           ["MessageQueue.acquire_read (vllm/distributed/device_communicators/shm_broadcast.py:864)",
                            "MultiprocExecutor.collective_rpc.<locals>.get_response (vllm/v1/executor/multiproc_executor.py:440)",
                            "EngineCore.step (vllm/v1/engine/core.py:420)"])
    assert prof.explain_thread(idle).startswith("model worker: waits on the shared-memory queue")
    assert prof.explain_thread(stepping).startswith("model worker: running a step")
    assert prof.explain_thread(core).startswith("engine core: sent a step to its workers")
