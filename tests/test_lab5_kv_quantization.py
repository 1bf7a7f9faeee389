"""Lab 5: the KV quantization module, the quantized mini-engine cache, the measurements and
real vLLM with an fp8 KV cache (or the explained skip where the hardware cannot run it)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from labs.core.errors import WorkbookError
from labs.lab5_kv_quantization import vllm_fp8
from labs.lab5_kv_quantization.cache import QuantizedPagedAttention
from labs.lab5_kv_quantization.calibrate import calibrate
from labs.lab5_kv_quantization.measure import (
    calibration_messages,
    evaluation_messages,
    greedy_answers,
    measure_schemes,
    phrasebook_messages,
    sequence_metadata,
    teacher_forced,
)
from labs.lab5_kv_quantization.quantize import SCHEMES, dequantize, get_scheme, quantize_with_scheme, scale_from_amax
from labs.core.mini.attention import AttentionMetadata
from labs.core.mini.llm import LLM
from labs.core.model_traits import model_traits
from labs.core.models import resolve_model
from tests.kv_quantization_support import kv_dtype_runs

TARGET_BYTES_RATIO = 0.53  # KV bytes vs bf16, scales included
TARGET_TOP1 = 0.99


def kv(num_tokens: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num_tokens, 2, 64, generator=gen) * torch.logspace(-1, 1, num_tokens)[:, None, None]


def static_scales(x: torch.Tensor, scheme_name: str) -> torch.Tensor | None:
    scheme = get_scheme(scheme_name)
    if scheme.granularity == "per_head":
        return scale_from_amax(x.abs().amax(dim=(0, 2)), scheme.storage_dtype).view(1, -1, 1)
    if scheme.granularity == "per_layer":
        return scale_from_amax(x.abs().amax(), scheme.storage_dtype).view(1, 1, 1)
    return None


@pytest.mark.parametrize("scheme_name", list(SCHEMES))
def test_round_trip_is_close_and_saturates(scheme_name: str) -> None:
    scheme = get_scheme(scheme_name)
    x = kv(16, 0)
    scale = static_scales(x, scheme_name)
    q, used_scale = quantize_with_scheme(x, scheme, scale)
    assert q.dtype == scheme.storage_dtype and q.shape == x.shape
    back = dequantize(q, used_scale, torch.float32)
    error = (back - x).abs()
    if scheme.storage_dtype == torch.int8:  # uniform levels: at most half a step off
        bound = used_scale / 2
    else:  # floating point: half a unit in the last of its mantissa bits, or half the smallest subnormal
        mantissa_bits, smallest_subnormal = {"fp8_e4m3": (3, 2**-9), "fp8_e5m2": (2, 2**-16)}[scheme_name]
        bound = torch.maximum(x.abs() * 2**-(mantissa_bits + 1), used_scale * smallest_subnormal / 2)
    worst = (error / bound).max()
    assert worst <= 1.001, f"{scheme_name}: round-trip error up to {worst:.3f}x the rounding bound"
    if scheme.is_static:  # a later token 10x beyond the calibrated amax must clip, not become NaN
        far = quantize_with_scheme(x * 10, scheme, scale)[0]
        assert torch.isfinite(far.float()).all()
        assert far.float().abs().max() == scheme.qmax


def test_bad_scheme_and_missing_scales_are_explained() -> None:
    with pytest.raises(WorkbookError, match="int8_per_token"):
        get_scheme("int4")
    with pytest.raises(WorkbookError, match="calibrate"):
        quantize_with_scheme(kv(4, 0), get_scheme("fp8_e4m3"), None)


@pytest.mark.parametrize("scheme_name", ["fp8_e4m3", "int8_per_token", "int8_per_head"])
def test_quantized_attention_reads_back_what_it_wrote(scheme_name: str) -> None:
    """Prefill then decode through the quantized cache == exact attention on quantize-dequantize(K/V)."""
    scheme = get_scheme(scheme_name)
    seq_lens, block_size = [37, 5], 32
    num_tokens = sum(seq_lens)
    gen = torch.Generator().manual_seed(1)
    query, key, value = (torch.randn(num_tokens + 2, h, 64, generator=gen) for h in (4, 2, 2))
    attn = QuantizedPagedAttention(4, 2, 64, scheme, static_scales(key, scheme_name), static_scales(value, scheme_name))
    attn.allocate(num_blocks=6, block_size=block_size, device=torch.device("cpu"))
    prefill = sequence_metadata(seq_lens, block_size, torch.device("cpu"))  # blocks 1-2, then 3
    out = attn(query[:num_tokens], key[:num_tokens], value[:num_tokens], prefill)

    def exact(q_rows: slice, kv_rows: list[int], num_queries: int) -> torch.Tensor:
        k, v = (dequantize(*quantize_with_scheme(t[kv_rows], scheme, s), torch.float32)
                for t, s in ((key, attn.key_scale), (value, attn.value_scale)))
        mask = torch.ones(num_queries, len(kv_rows), dtype=torch.bool).tril(len(kv_rows) - num_queries)
        return F.scaled_dot_product_attention(query[q_rows].transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                              attn_mask=mask, enable_gqa=True).transpose(0, 1)

    torch.testing.assert_close(out[:37], exact(slice(0, 37), list(range(37)), 37), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[37:], exact(slice(37, 42), list(range(37, 42)), 5), atol=1e-5, rtol=1e-5)
    # One decode token per sequence: slots 37 of seq 0 (block 2, offset 5) and 5 of seq 1 (block 3).
    decode = AttentionMetadata(torch.tensor([2 * 32 + 5, 3 * 32 + 5]), torch.tensor([0, 1]),
                               torch.tensor([[1, 2], [3, 0]]), torch.tensor([38, 6]), [])
    out = attn(query[num_tokens:], key[num_tokens:], value[num_tokens:], decode)
    torch.testing.assert_close(out[0:1], exact(slice(42, 43), list(range(37)) + [42], 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:2], exact(slice(43, 44), list(range(37, 42)) + [43], 1), atol=1e-5, rtol=1e-5)


def test_calibration_amax_is_the_largest_kv_the_model_writes() -> None:
    llm = LLM("tiny-phrasebook", num_kv_blocks=64)
    messages = phrasebook_messages()[:4]
    amax = calibrate(llm, messages)
    outputs = greedy_answers(llm, messages)
    # Generation never feeds its last sampled token back: the tokens whose K/V were written are these.
    written = [list(o.prompt_token_ids) + list(o.outputs[0].token_ids)[:-1] for o in outputs]
    run = teacher_forced(llm, written, [len(o.prompt_token_ids) for o in outputs])
    for layer_idx, inputs in enumerate(run.layer_inputs):  # rtol: bf16 decode vs prefill rounding
        torch.testing.assert_close(amax.key[layer_idx], inputs.key.abs().amax(dim=(0, 2)).float(), rtol=0.02, atol=0)
        torch.testing.assert_close(amax.value[layer_idx], inputs.value.abs().amax(dim=(0, 2)).float(), rtol=0.02, atol=0)
    assert amax.num_tokens == sum(len(tokens) for tokens in written)


def test_only_the_phrasebook_model_answers_every_prompt_and_every_model_calibrates_alike() -> None:
    """tiny-phrasebook's exact match is judged on all 320 answers; another model's is shown on a sample."""
    everything = phrasebook_messages()
    assert evaluation_messages(model_traits(resolve_model("tiny-phrasebook").path)) == everything
    sample = evaluation_messages(model_traits(resolve_model("tiny-llama").path))
    assert len(sample) == 64 and all(chat in everything for chat in sample)
    assert len({str(chat) for chat in sample}) == 64, "a sample of distinct prompts"
    assert len(calibration_messages()) == 32 and all(chat in sample for chat in calibration_messages())


@pytest.fixture(scope="module")
def results() -> Any:
    return measure_schemes("tiny-phrasebook")


def test_measurements_meet_the_targets_on_the_phrasebook(results: Any) -> None:
    table = results.table()
    print("\n" + table.to_string() + "\n" + results.layer_table().to_string())
    assert list(table.index) == list(SCHEMES)
    for report in results.reports:
        assert report.kv_bytes_ratio <= TARGET_BYTES_RATIO, f"{report.scheme}: {report.kv_bytes_ratio:.4f} of bf16"
        assert report.top1_agreement >= TARGET_TOP1, f"{report.scheme}: top-1 agreement {report.top1_agreement:.4f}"
        assert report.num_exact_match == report.num_prompts == 320, \
            f"{report.scheme}: {report.num_exact_match}/320 phrasebook answers unchanged"
        assert all(0 < e < 0.2 for e in report.layer_attention_errors), report.layer_attention_errors
        assert 0 < report.max_abs_logit_error < float("inf")
    by_name = {r.scheme: r for r in results.reports}
    # One mantissa bit fewer: e5m2's error is larger than e4m3's on the same scales.
    assert max(by_name["fp8_e5m2"].layer_attention_errors) > max(by_name["fp8_e4m3"].layer_attention_errors)
    assert by_name["int8_per_token"].bytes_per_token > by_name["int8_per_head"].bytes_per_token


def test_fp8_skip_is_explained_without_avx512(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where vLLM cannot run an fp8 cache, the run is skipped with the reason, no engine started."""
    hw = vllm_fp8.detect_hardware()
    without = dataclasses.replace(hw, device="cpu", gpu_names=(),
                                  cpu_flags=hw.cpu_flags - {"avx512f", "amx_bf16", "amx_tile", "amx_int8"})
    monkeypatch.setattr(vllm_fp8, "detect_hardware", lambda: without)
    run = vllm_fp8.run_vllm_kv_dtype("fp8", phrasebook_messages()[:2])
    assert run.skipped and "AVX-512 or AMX" in run.skipped and not run.answers
    assert vllm_fp8.unsupported_reason("auto") is None
    base = vllm_fp8.VllmKVRun("auto", None, 100, 32, 2048, (1.0, 1.0), [[1, 2]])
    table = vllm_fp8.compare_kv_dtypes([base, run])
    assert table.loc["fp8", "status"].startswith("skipped: ")


@pytest.mark.engine
def test_real_vllm_fp8_kv_cache_doubles_capacity_and_keeps_answers() -> None:
    """Each KV dtype in its own engine, one after another, in a fresh process (tests/kv_quantization_support.py)."""
    if vllm_fp8.unsupported_reason("fp8"):
        pytest.skip(vllm_fp8.unsupported_reason("fp8"))
    auto, fp8, e5m2 = kv_dtype_runs()
    for run in (fp8, e5m2):
        assert run.bytes_per_token * 2 == auto.bytes_per_token, (run.kv_cache_dtype, run.bytes_per_token)
        assert 1.9 <= run.capacity_tokens / auto.capacity_tokens <= 2.1, (run.num_blocks, auto.num_blocks)
        same = sum(a == b for a, b in zip(run.answers, auto.answers))
        assert same >= TARGET_TOP1 * len(auto.answers), f"{run.kv_cache_dtype}: {same}/320 answers equal bf16's"
