"""Lab 4: the from-scratch TP layers in real ranks, vLLM with tensor_parallel_size=2, and a debugger per rank.

Nothing here is simulated: ranks are real processes joined by torch.distributed (gloo on the CPU),
the truth is transformers' Qwen2 in one process, vLLM's TP=2 engine runs in a subprocess (its
distributed state is process-wide), and the debugger test drives two real debugpy listeners.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from labs.core.errors import WorkbookError
from labs.core.engine_settings import cpu_threads_bind
from labs.core.hardware import detect_hardware
from labs.core.mini.config import ModelShape
from labs.lab4_tensor_parallel import checks
from labs.lab4_tensor_parallel.comm import rank_placement
from labs.lab4_tensor_parallel.launcher import RankFailedError, run_ranks
from labs.lab4_tensor_parallel.layers import head_ids_for_rank, rows_of_heads

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `dap_client`, whatever pytest's import mode
from dap_client import DAPClient, attach, consecutive_free_ports, kill_tree, tail  # noqa: E402

pytestmark = pytest.mark.all_cores  # TP=2 on the CPU: a core per rank (tests/workers.py)

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # float32; TP changes only the order of a sum (measured: ~3e-5 at most)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max().clamp(min=1.0)).item()


def check_equal_to_one_process(model_path: Path, world_size: int, hf_model: Any) -> list[dict[str, Any]]:
    token_ids = checks.phrasebook_prompt_ids(model_path, index=3)
    ref, outs = checks.run_equivalence(model_path, token_ids, world_size=world_size, hf_model=hf_model)
    num_layers = len(ref.block_out)
    for rank, out in enumerate(outs):
        for i in range(num_layers):
            for key, truth in (("attn_out", ref.attn_out), ("mlp_out", ref.mlp_out), ("block_out", ref.block_out)):
                err = relative_error(out[key][i], truth[i])
                assert err < TOLERANCE, f"{world_size} ranks: rank {rank} layer {i} {key} differs by {err:.2e}"
        assert out["reduces"]["attention"] == [1] * num_layers and out["reduces"]["mlp"] == [1] * num_layers
        assert out["reduces"]["block"] == [2] * num_layers, out["reduces"]  # Megatron: two per block
        assert out["reduces"]["model"] == 1 + 2 * num_layers, out["model_call_sites"]  # + the vocab-parallel embedding
        assert relative_error(out["logits"], ref.logits) < TOLERANCE
        assert torch.equal(out["logits"].argmax(-1), ref.logits.argmax(-1))
    return outs


def test_tp_layers_on_two_ranks_equal_one_process(model_path: Path, hf_model: Any) -> None:
    outs = check_equal_to_one_process(model_path, 2, hf_model)
    shape = ModelShape.from_model_dir(model_path)
    q_rows = shape.num_attention_heads // 2 * shape.head_dim
    for out in outs:
        assert out["param_shapes"]["model.layers.0.self_attn.q_proj.weight"] == (q_rows, shape.hidden_size)
        assert out["param_shapes"]["model.layers.0.mlp.down_proj.weight"] == (shape.hidden_size, shape.intermediate_size // 2)


def test_tp_layers_on_four_ranks_replicate_kv_heads(model_path: Path, hf_model: Any) -> None:
    """4 ranks, 2 KV heads (GQA): each KV head lives on 2 ranks, and the result is still exact."""
    shape = ModelShape.from_model_dir(model_path)
    if shape.num_attention_heads % 4 or shape.num_key_value_heads >= 4:
        pytest.skip("needs a model with fewer than 4 KV heads and a multiple of 4 query heads")
    outs = check_equal_to_one_process(model_path, 4, hf_model)
    kv_rows = [out["param_shapes"]["model.layers.0.self_attn.k_proj.weight"][0] for out in outs]
    assert kv_rows == [shape.head_dim] * 4


def test_timing_splits_compute_and_all_reduce(model_path: Path) -> None:
    rows = checks.run_timing(model_path, world_size=2, num_tokens=32, num_iters=3)
    num_layers = ModelShape.from_model_dir(model_path).num_hidden_layers
    for row in rows:
        assert row["num_all_reduces"] == 2 * num_layers * 3  # counted, not assumed
        assert row["all_reduce_bytes"] == row["num_all_reduces"] * 32 * 256 * 2  # (tokens, hidden) bf16 each time
        assert row["all_reduce_s"] > 0 and row["compute_s"] > 0
    (single,) = checks.run_timing(model_path, world_size=1, num_tokens=32, num_iters=3)
    assert single["num_all_reduces"] == 0  # one rank: nothing to reduce


def test_a_failing_rank_reports_its_traceback(hf_model: Any, model_path: Path) -> None:
    ref = checks.hf_reference(model_path, [1, 2, 3], hf_model)
    with pytest.raises(RankFailedError, match=r"rank \d failed:(.|\n)*no-such-model"):
        run_ranks(checks.equivalence_task, ("/no-such-model", ref), world_size=2, timeout_s=120)


def test_a_task_defined_in_main_is_refused() -> None:
    def task(rank: int, world_size: int, placement: Any) -> None:
        return None

    task.__module__ = "__main__"
    with pytest.raises(WorkbookError, match="cannot import it"):
        run_ranks(task)


def test_backend_and_device_follow_the_hardware() -> None:
    hw = detect_hardware()
    cpu = dataclasses.replace(hw, device="cpu", gpu_names=())
    gpus = dataclasses.replace(hw, device="cuda", gpu_names=("NVIDIA H100", "NVIDIA H100"))
    assert rank_placement(1, 2, cpu).backend == "gloo" and rank_placement(1, 2, cpu).device == "cpu"
    assert rank_placement(1, 2, cpu).num_threads == max(1, hw.num_cpu_cores // 2)
    assert (rank_placement(1, 2, gpus).backend, rank_placement(1, 2, gpus).device) == ("nccl", "cuda:1")


@pytest.mark.engine
def test_vllm_tp2_equals_tp1_and_shards_like_megatron(llm: Any, model_path: Path) -> None:
    """Greedy tokens of vLLM TP=2 (subprocess) == TP=1 (this session's engine); each rank's real weights."""
    from safetensors.torch import load_file

    from labs.lab4_tensor_parallel.vllm_tp import greedy_token_ids, run_tp_in_subprocess

    report = run_tp_in_subprocess(2)
    assert report["token_ids"] == greedy_token_ids(llm), "vLLM TP=2 produced different greedy tokens than TP=1"
    assert all(tokens for tokens in report["token_ids"])

    hw = detect_hardware()
    if hw.device == "cpu":  # thread binding came from labs.core.hardware, and the workers really run on it
        assert report["bind"] == os.environ.get("VLLM_CPU_OMP_THREADS_BIND", cpu_threads_bind(hw, 2))
        affinities = [set(facts["cpu_affinity"]) for facts in sorted(report["ranks"], key=lambda f: f["rank"])]
        assert not affinities[0] & affinities[1], affinities
    assert sorted(facts["rank"] for facts in report["ranks"]) == [0, 1]

    shape = ModelShape.from_model_dir(model_path)
    checkpoint = load_file(str(model_path / "model.safetensors"))
    hd, per_rank = shape.head_dim, shape.intermediate_size // 2
    for rank, weights in enumerate(report["weights"]):
        layers = {row["name"]: row["weight"] for row in weights["layers"]}
        for i in range(shape.num_hidden_layers):
            p = f"model.layers.{i}."
            qkv = torch.cat([rows_of_heads(checkpoint[p + f"self_attn.{n}_proj.weight"],
                                           head_ids_for_rank(rank, 2, heads), hd)
                             for n, heads in (("q", shape.num_attention_heads), ("k", shape.num_key_value_heads),
                                              ("v", shape.num_key_value_heads))])
            assert torch.equal(layers[p + "self_attn.qkv_proj"], qkv), f"rank {rank} layer {i} qkv_proj"
            gate_up = torch.cat([checkpoint[p + f"mlp.{n}_proj.weight"][rank * per_rank:(rank + 1) * per_rank]
                                 for n in ("gate", "up")])
            assert torch.equal(layers[p + "mlp.gate_up_proj"], gate_up), f"rank {rank} layer {i} gate_up_proj"
            assert torch.equal(layers[p + "mlp.down_proj"],
                               checkpoint[p + "mlp.down_proj.weight"][:, rank * per_rank:(rank + 1) * per_rank])
            o_cols = shape.num_attention_heads * hd // 2
            assert torch.equal(layers[p + "self_attn.o_proj"],
                               checkpoint[p + "self_attn.o_proj.weight"][:, rank * o_cols:(rank + 1) * o_cols])


def breakpoint_line() -> tuple[str, int]:
    from labs.lab4_tensor_parallel import comm

    path = Path(comm.__file__)  # wherever the module lives
    (line,) = [n for n, text in enumerate(path.read_text().splitlines(), 1) if "# BREAKPOINT: the all-reduce" in text]
    return str(path), line


def stop_each_rank_once(script_args: list[str], switch: str, bp_file: str, bp_line: int,
                        check_stop: Callable[[DAPClient, dict[str, Any], int], None],
                        timeout_s: float = 240) -> tuple[int, str]:
    """Run step4 with `switch`=1, attach one DAP client per rank, check where each stops, continue.

    Returns:
        The base port, and the script's output (it exited 0).
    """
    base = consecutive_free_ports(2)
    env = {**os.environ, switch: "1", "WORKBOOK_DEBUG_BASE_PORT": str(base), "PYTHONUNBUFFERED": "1"}
    with tempfile.NamedTemporaryFile(prefix="tp-debug-", suffix=".log", delete=False) as out:
        log = Path(out.name)
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "my_debug_scripts/step4_tensor_parallel.py", *script_args], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    clients: list[DAPClient] = []
    try:
        try:
            for rank in (0, 1):
                clients.append(attach(base + rank, proc, bp_file, bp_line))
            for rank, client in enumerate(clients):
                stopped = client.wait_event("stopped", timeout=timeout_s,
                                            predicate=lambda b: b.get("reason") == "breakpoint")
                thread_id = stopped.get("threadId") or client.request("threads")["threads"][0]["id"]
                top = client.request("stackTrace", {"threadId": thread_id, "levels": 30})["stackFrames"][0]
                check_stop(client, top, rank)
                client.request("setBreakpoints", {"source": {"path": bp_file}, "breakpoints": []})  # once is enough
                client.request("continue", {"threadId": thread_id})
            code = proc.wait(timeout=timeout_s)
        except (AssertionError, TimeoutError, RuntimeError, StopIteration, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"{exc!r} after {time.monotonic() - started:.0f} s; exit {proc.poll()}\n{tail(log)}")
        assert code == 0, tail(log)
        return base, log.read_text()
    finally:
        for client in clients:
            client.close()
        kill_tree(proc)
        log.unlink(missing_ok=True)


@pytest.mark.debugger
def test_a_debugger_per_rank_stops_both_ranks_at_the_all_reduce() -> None:
    bp_file, bp_line = breakpoint_line()

    def check_stop(client: DAPClient, top: dict[str, Any], rank: int) -> None:
        assert top["name"].endswith("__call__") and top["line"] == bp_line, top
        scopes = client.request("scopes", {"frameId": top["id"]})["scopes"]
        local_ref = next(s for s in scopes if s["name"].lower().startswith("local"))["variablesReference"]
        local_vars = {v["name"]: v["value"] for v in client.request("variables", {"variablesReference": local_ref})["variables"]}
        assert local_vars.get("rank") == str(rank), (rank, local_vars)

    base, text = stop_each_rank_once([], "WORKBOOK_DEBUG_RANKS", bp_file, bp_line, check_stop, timeout_s=180)
    num_reduces = 1 + 2 * ModelShape.from_model_dir(REPO / "models" / "tiny-phrasebook").num_hidden_layers
    assert f"rank 0: debugpy listening on 127.0.0.1:{base}" in text, text[-6000:]
    assert f"whole model: {num_reduces} all-reduces" in text, text[-6000:]


def vllm_all_reduce_line() -> tuple[str, int]:
    import vllm.distributed.communication_op as op

    path = Path(op.__file__)
    lines = path.read_text().splitlines()
    start = next(n for n, text in enumerate(lines, 1) if text.startswith("def tensor_model_parallel_all_reduce("))
    line = next(n for n in range(start, len(lines) + 1) if lines[n - 1].strip().startswith("return "))
    return str(path), line


@pytest.mark.debugger
def test_a_debugger_per_vllm_worker_stops_both_at_vllms_all_reduce() -> None:
    """vLLM's OWN TP workers, through the workbook's vLLM plugin: each listens, both stop, tokens unchanged."""
    from labs.core.debug.vllm_workers import check_plugin_registered

    check_plugin_registered()  # `pip install -e .` registers it; without it this test could not attach
    bp_file, bp_line = vllm_all_reduce_line()

    def check_stop(client: DAPClient, top: dict[str, Any], rank: int) -> None:
        assert top["name"] == "tensor_model_parallel_all_reduce" and top["line"] == bp_line, top
        seen_rank = client.request("evaluate", {"expression": "torch.distributed.get_rank()",
                                                "frameId": top["id"], "context": "repl"})["result"]
        assert seen_rank == str(rank), (rank, seen_rank)

    base, text = stop_each_rank_once(["--vllm-only"], "WORKBOOK_DEBUG_VLLM_WORKERS", bp_file, bp_line, check_stop)
    assert f"vLLM worker rank 1: debugpy listening on 127.0.0.1:{base + 1}" in text, text[-6000:]
    assert "vLLM greedy tokens, TP=2 vs TP=1: identical" in text, text[-6000:]
    assert text.count("debugpy listening") == 2, "TP=1's worker must not wait for a debugger"


def test_vllm_plugin_is_inert_unless_asked() -> None:
    """The plugin runs in every vLLM process of this environment: it must do nothing by default."""
    from labs.core.debug import vllm_workers as plugin

    assert plugin.worker_rank("VllmWorker-1") == 1 and plugin.worker_rank("MainProcess") is None
    code = ("import os, multiprocessing; os.environ.pop('WORKBOOK_DEBUG_VLLM_WORKERS', None); "
            "multiprocessing.current_process().name = 'VllmWorker-0'; "
            "from labs.core.debug.vllm_workers import register; register(); "
            "import sys; print('debugpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_launch_json_has_a_compound_attaching_to_each_rank() -> None:
    from labs.core.debug.ports import DEFAULT_DEBUG_BASE_PORT
    from tests.jsonc import read_jsonc

    launch = read_jsonc(REPO / ".vscode" / "launch.json")
    configs = {c["name"]: c for c in launch["configurations"]}
    (compound,) = [c for c in launch.get("compounds", []) if "tensor-parallel" in c["name"]]
    ports = sorted(configs[name]["connect"]["port"] for name in compound["configurations"]
                   if configs[name]["request"] == "attach")
    assert ports == [DEFAULT_DEBUG_BASE_PORT, DEFAULT_DEBUG_BASE_PORT + 1]
    for switch in ("WORKBOOK_DEBUG_RANKS", "WORKBOOK_DEBUG_VLLM_WORKERS"):  # our ranks; vLLM's own workers
        waiting = [c for c in configs.values() if c.get("env", {}).get(switch) == "1"]
        assert waiting and all(c["program"].endswith("step4_tensor_parallel.py") and c["subProcess"] is False
                               and c["env"]["WORKBOOK_DEBUG_BASE_PORT"] == str(DEFAULT_DEBUG_BASE_PORT)
                               for c in waiting), switch
