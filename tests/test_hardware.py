"""Hardware detection and the engine settings derived from it (no engine started)."""

from __future__ import annotations

import dataclasses
import glob
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `dap_client`, whatever pytest's import mode
from dap_client import consecutive_free_ports  # noqa: E402
from labs.core.errors import WorkbookError
from labs.core.engine_settings import (cpu_threads_bind, engine_settings, in_process_num_threads, server_executor,
                                      server_num_threads)
from labs.core.hardware import Hardware, UnsupportedHardwareError, parse_cpu_list, detect_hardware


def _hw(**changes) -> Hardware:
    base = Hardware(device="cpu", gpu_names=(), cpu_model="Test CPU", cpu_flags=frozenset({"avx2"}),
                    num_cpu_cores=2, numa_node_cpu_ids={0: [0, 1]}, total_memory_gib=24.0)
    return dataclasses.replace(base, **changes)


def _this_machine() -> dict:
    """What describe() must say, read here without labs.core.hardware: affinity mask, /proc, /sys, /dev."""
    first_cpu = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    fields = dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in first_cpu.splitlines()))
    (mem_kib,) = [int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:")]
    allowed = os.sched_getaffinity(0)
    numa_nodes = [d for d in Path("/sys/devices/system/node").glob("node[0-9]*")
                  if allowed & set(_cpus_of(d / "cpulist"))]
    return {"model": fields["model name"], "flags": set(fields["flags"].split()), "cores": len(allowed),
            "numa_nodes": max(1, len(numa_nodes)), "mem_gib": mem_kib / 2**20,  # no NUMA information: one node
            "nvidia_devices": sorted(glob.glob("/dev/nvidia[0-9]*"))}


def _cpus_of(cpulist: Path) -> list[int]:
    ids: list[int] = []
    for part in filter(None, cpulist.read_text().strip().split(",")):
        lo, _, hi = part.partition("-")
        ids += range(int(lo), int(hi or lo) + 1)
    return ids


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads Linux's /proc")
def test_detect_hardware_reads_this_machine() -> None:
    hw = detect_hardware()
    me = _this_machine()
    assert hw.num_cpu_cores == me["cores"] and sum(map(len, hw.numa_node_cpu_ids.values())) == me["cores"]
    assert abs(hw.total_memory_gib - me["mem_gib"]) < 0.01
    assert hw.cpu_model == me["model"] and hw.cpu_flags == me["flags"]
    if me["nvidia_devices"]:  # a GPU machine: describe() names the GPUs, not the CPU
        assert hw.device == "cuda" and hw.describe().startswith(f"CUDA: {len(hw.gpu_names)} x ")
        return
    assert hw.device == "cpu" and hw.gpu_names == ()  # no GPU here
    isa = ", ".join(f for f in ("avx2", "avx512f", "amx_bf16") if f in me["flags"]) or "no AVX2"
    assert hw.describe() == (f"CPU: {me['model']} ({me['cores']} usable cores, {me['numa_nodes']} NUMA node(s), "
                             f"{isa}, {me['mem_gib']:.0f} GiB RAM)")


def test_describe_says_what_chose_the_settings() -> None:
    """Fixed inputs, fixed sentence: a wrong core count, ISA list or memory figure fails here."""
    assert _hw().describe() == "CPU: Test CPU (2 usable cores, 1 NUMA node(s), avx2, 24 GiB RAM)"
    assert _hw(cpu_flags=frozenset({"sse4_2"}), num_cpu_cores=8, total_memory_gib=63.6,
               numa_node_cpu_ids={0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}).describe() == (
        "CPU: Test CPU (8 usable cores, 2 NUMA node(s), no AVX2, 64 GiB RAM)")
    assert _hw(cpu_flags=frozenset({"avx2", "avx512f", "amx_bf16"})).describe() == (
        "CPU: Test CPU (2 usable cores, 1 NUMA node(s), avx2, avx512f, amx_bf16, 24 GiB RAM)")
    assert _hw(device="cuda", gpu_names=("NVIDIA H200", "NVIDIA H200")).describe() == "CUDA: 2 x NVIDIA H200"


def test_cpu_list_parsing() -> None:
    assert parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]


def test_cpu_settings_are_cpu_only() -> None:
    s = engine_settings(_hw())
    assert s.engine_kwargs["block_size"] % 32 == 0
    assert s.engine_kwargs["enforce_eager"] is True
    assert "gpu_memory_utilization" not in s.engine_kwargs
    assert s.reasons


def test_gpu_settings_carry_no_cpu_knobs() -> None:
    s = engine_settings(_hw(device="cuda", gpu_names=("NVIDIA H100",)))
    assert 0 < s.engine_kwargs["gpu_memory_utilization"] < 1
    assert "block_size" not in s.engine_kwargs and "enforce_eager" not in s.engine_kwargs
    assert not any(k.startswith("VLLM_CPU") for k in s.env)


def test_cpu_rejects_block_size_16_with_reason() -> None:
    with pytest.raises(UnsupportedHardwareError, match="multiple of 32"):
        engine_settings(_hw(), block_size=16)
    assert engine_settings(_hw(device="cuda", gpu_names=("x",)), block_size=16).engine_kwargs["block_size"] == 16


def test_fp8_kv_cache_needs_avx512_or_amx_on_cpu() -> None:
    with pytest.raises(UnsupportedHardwareError, match="AVX-512 or AMX"):
        engine_settings(_hw(), kv_cache_dtype="fp8")
    assert engine_settings(_hw(cpu_flags=frozenset({"avx512f"})), kv_cache_dtype="fp8")
    assert engine_settings(_hw(device="cuda", gpu_names=("x",)), kv_cache_dtype="fp8")


def test_tensor_parallel_thread_binding_splits_cores() -> None:
    assert cpu_threads_bind(_hw(), 2) == "0|1"
    assert cpu_threads_bind(_hw(num_cpu_cores=8, numa_node_cpu_ids={0: list(range(8))}), 2) == "0-3|4-7"
    with pytest.raises(UnsupportedHardwareError):
        cpu_threads_bind(_hw(), 3)


@pytest.mark.parametrize(("bind", "omp_num_threads", "expected"), [
    ("2-3", None, 2),  # a binding: one thread per core of it
    ("0|1", None, 1),  # a TP binding: rank 0's share (this process's engine is rank 0)
    ("0,2-4", "8", 4),  # the binding wins over OMP_NUM_THREADS
    ("auto", "3", 3),
    ("nobind", None, 8),  # nothing said: one per core of the machine, torch's own default
    (None, None, 8),
])
def test_an_in_process_engine_gets_as_many_threads_as_its_cores(
        bind: str | None, omp_num_threads: str | None, expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("VLLM_CPU_OMP_THREADS_BIND", bind), ("OMP_NUM_THREADS", omp_num_threads)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    num_threads, reason = in_process_num_threads(_hw(num_cpu_cores=8, numa_node_cpu_ids={0: list(range(8))}))
    assert num_threads == expected
    assert f"{expected} OpenMP thread(s)" in reason


def _set_env(monkeypatch: pytest.MonkeyPatch, **values: str | None) -> None:
    for name, value in values.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


@pytest.mark.parametrize(("device", "tp", "executor", "flag", "env"), [
    ("cpu", 1, None, "uni", {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "7"}),  # the model in the engine core
    ("cpu", 1, "mp", "mp", {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}),  # Lab 10: a worker process of its own
    ("cpu", 2, None, None, {}),  # TP: vLLM starts a worker per rank and binds them
    ("cuda", 1, None, None, {}),  # a GPU: vLLM's own choice (uni for TP=1), nothing CPU-only
    ("cuda", 1, "mp", "mp", {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}),
    ("cuda", 1, "uni", "uni", {}),
])
def test_a_server_runs_its_model_where_the_hardware_and_the_lab_need_it(
        device: str, tp: int, executor: str | None, flag: str | None, env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _set_env(monkeypatch, VLLM_CPU_OMP_THREADS_BIND=None, OMP_NUM_THREADS=None, WORKBOOK_DEBUG_VLLM_WORKERS=None)
    layout = server_executor(_hw(device=device, num_cpu_cores=8, numa_node_cpu_ids={0: list(range(8))}), tp, executor)
    assert layout.engine_kwargs.get("distributed_executor_backend") == flag
    assert layout.env == env
    assert bool(layout.reasons) == (flag is not None)


def test_a_server_refuses_a_layout_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="tensor_parallel_size > 1"):
        server_executor(_hw(), 2, "uni")
    with pytest.raises(ValueError, match="'ray'"):
        server_executor(_hw(), 1, "ray")
    # A debugger per vLLM worker needs worker processes: the hardware's choice steps aside.
    monkeypatch.setenv("WORKBOOK_DEBUG_VLLM_WORKERS", "1")
    assert server_executor(_hw(), 1).env == {}


@pytest.mark.parametrize(("bind", "omp_num_threads", "num_cores", "expected"), [
    (None, None, 8, 7),  # every core but the API server's
    (None, None, 2, 1),
    (None, None, 1, 1),  # one core: the engine still computes
    ("2-4", None, 8, 3),  # a binding (a pytest worker's, or the learner's): one thread per core of it
    ("auto", "4", 8, 4),  # the learner's OMP_NUM_THREADS
])
def test_a_cpu_servers_engine_core_leaves_the_api_server_a_core(
        bind: str | None, omp_num_threads: str | None, num_cores: int, expected: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _set_env(monkeypatch, VLLM_CPU_OMP_THREADS_BIND=bind, OMP_NUM_THREADS=omp_num_threads)
    num_threads, reason = server_num_threads(_hw(num_cpu_cores=num_cores, numa_node_cpu_ids={0: list(range(num_cores))}))
    assert num_threads == expected and reason


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_debugging_vllm_workers_spawns_them_and_lifts_the_step_timeout(device: str, monkeypatch) -> None:
    """GPUs fork workers by default, and a forked worker would skip the plugin: both paths must spawn."""
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    monkeypatch.delenv("WORKBOOK_DEBUG_VLLM_WORKERS", raising=False)
    plain = engine_settings(_hw(device=device), tensor_parallel_size=2)
    assert "VLLM_WORKER_MULTIPROC_METHOD" not in plain.env
    monkeypatch.setenv("WORKBOOK_DEBUG_VLLM_WORKERS", "1")
    # Free ports: the default 5679/5680 may be held by the learner's own debug session meanwhile.
    monkeypatch.setenv("WORKBOOK_DEBUG_BASE_PORT", str(consecutive_free_ports(2)))
    debug = engine_settings(_hw(device=device), tensor_parallel_size=2)
    assert debug.env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    assert int(debug.env["VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"]) >= 3600
    assert any("WORKBOOK_DEBUG_VLLM_WORKERS" in reason for reason in debug.reasons)
    monkeypatch.setenv("VLLM_PLUGINS", "lora_filesystem_resolver")
    with pytest.raises(WorkbookError, match="VLLM_PLUGINS='lora_filesystem_resolver' leaves out "
                                           "'workbook_debug_workers'") as refused:
        engine_settings(_hw(device=device), tensor_parallel_size=2)
    assert type(refused.value) is WorkbookError  # the install's problem, not the hardware's
