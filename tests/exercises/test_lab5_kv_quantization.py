"""Grades Lab 5's exercises: KV quantization, KV bytes per token, the worst layer.

The truths: PyTorch's fp8 dtypes and rounding; vLLM's KV cache sizing (the live engine, and its
`FullAttentionSpec` for other shapes); the bytes the workbook's quantized mini-engine cache really
allocates; and the per-layer attention errors that engine measures on the bf16 model's own K/V.
Runs the reference by default; `make grade LAB=5` (LABS_GRADE=learner) runs yours.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from labs.core import vllm_internals as vi
from labs.core.grading import load_implementation
from labs.lab5_kv_quantization.cache import QuantizedPagedAttention
from labs.lab5_kv_quantization.measure import greedy_answers, isolated_attention_errors, phrasebook_messages, teacher_forced
from labs.lab5_kv_quantization.quantize import get_scheme
from labs.core.mini.llm import LLM
from labs.lab5_kv_quantization import solution as reference

CONFIGS = [(4, 2, 64), (24, 2, 64), (28, 4, 128), (32, 8, 128), (80, 8, 128)]  # (layers, kv heads, head_dim)
ERROR_RTOL = 0.02  # yours vs measured: both float32, only summation order differs
TIE = 0.03  # layers whose measured errors are within 3% of the worst count as the worst


@pytest.fixture(scope="module")
def impl() -> Any:
    return load_implementation("lab5_kv_quant")


def sample_kv(seed: int = 0) -> torch.Tensor:
    """(num_tokens, num_kv_heads, head_dim) bf16 with magnitudes varying 1000x between tokens."""
    gen = torch.Generator().manual_seed(seed)
    magnitudes = torch.logspace(-2, 1, 12)[:, None, None]
    return (torch.randn(12, 2, 64, generator=gen) * magnitudes).to(torch.bfloat16)


def check_int8_per_token(impl: Any) -> None:
    x = sample_kv()
    x[3] = 0  # an all-zero token must not give NaN
    q, scale = impl.quantize_int8_per_token(x)
    assert q.dtype == torch.int8 and q.shape == x.shape, f"q: {q.dtype} {tuple(q.shape)}, expected int8 {tuple(x.shape)}"
    assert scale.shape == (12, 1, 1), f"scale shape {tuple(scale.shape)}: expected one scale per token, (12, 1, 1)"
    per_token_max = q.abs().amax(dim=(1, 2)).tolist()
    assert all(m == 127 for i, m in enumerate(per_token_max) if i != 3), \
        f"each token's largest |q| should be 127 (its amax maps to the top level): {per_token_max}"
    back = impl.dequantize(q, scale, torch.float32)
    assert torch.isfinite(back).all(), "dequantized values contain NaN/inf (the all-zero token?)"
    error = (back - x.float()).abs()
    assert (error <= scale / 2 * 1.001 + 1e-12).all(), \
        f"round-trip error up to {(error / scale).max():.3f} steps: rounding should keep it within half a step"


def check_fp8(impl: Any) -> None:
    x = sample_kv(1).float() * 40  # amax ~ 400 * 4: beyond both dtypes' range at scale 1
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        for scale in (torch.tensor(1.0), torch.tensor(0.01), x.abs().amax() / torch.finfo(dtype).max):
            got = impl.quantize_fp8(x, scale, dtype)
            limit = torch.finfo(dtype).max
            expected = (x / scale).clamp(-limit, limit).to(dtype)
            assert got.dtype == dtype, f"{dtype}: got {got.dtype}"
            assert torch.isfinite(got.float()).all(), f"{dtype}, scale {float(scale):.3g}: NaN/inf: saturate first"
            assert torch.equal(got.float(), expected.float()), \
                f"{dtype}, scale {float(scale):.3g}: codes differ from round-to-nearest of x / scale"
            back = impl.dequantize(got, scale, torch.bfloat16)
            assert back.dtype == torch.bfloat16 and torch.equal(back, (expected.float() * scale).bfloat16()), \
                f"{dtype}: dequantize should return q * scale in the requested dtype"


def quantized_cache_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, scheme: str) -> int:
    """What the mini engine's quantized cache allocates per token slot (codes + per-token scales)."""
    scale = torch.ones(1, num_kv_heads, 1)
    attn = QuantizedPagedAttention(num_kv_heads, num_kv_heads, head_dim, get_scheme(scheme), scale, scale)
    num_blocks, block_size = 2, 32
    attn.allocate(num_blocks, block_size, torch.device("cpu"))
    return num_layers * sum(t.numel() * t.element_size() for t in attn.cache_tensors()) // (num_blocks * block_size)


def check_kv_bytes_configs(impl: Any) -> None:
    for num_layers, num_kv_heads, head_dim in CONFIGS:
        for scheme, kv_cache_dtype in (("bf16", "auto"), ("fp8", "fp8"), ("fp8_e5m2", "fp8_e5m2")):
            truth = vi.kv_cache_spec_bytes_per_token(num_layers, num_kv_heads, head_dim, kv_cache_dtype)
            got = impl.kv_bytes_per_token(num_layers, num_kv_heads, head_dim, scheme)
            assert got == truth, (f"{scheme}, {num_layers} layers x {num_kv_heads} KV heads x {head_dim}: "
                                  f"yours {got} bytes/token, vLLM's KV cache spec {truth}")
        for scheme in ("int8_per_head", "int8_per_token"):
            truth = quantized_cache_bytes_per_token(num_layers, num_kv_heads, head_dim, scheme)
            got = impl.kv_bytes_per_token(num_layers, num_kv_heads, head_dim, scheme)
            assert got == truth, (f"{scheme}, {num_layers} layers x {num_kv_heads} KV heads x {head_dim}: "
                                  f"yours {got} bytes/token, the quantized cache allocates {truth}")


@pytest.fixture(scope="module")
def measured_layers() -> list[SimpleNamespace]:
    """Three phrasebook answers, teacher-forced through the bf16 mini engine: each layer's q/k/v,
    and the per-layer errors the int8 per-token cache gives on them."""
    llm = LLM("tiny-phrasebook", num_kv_blocks=64)
    messages = [phrasebook_messages()[i] for i in (4, 120, 301)]
    cases = []
    for out in greedy_answers(llm, messages):
        sequence = list(out.prompt_token_ids) + list(out.outputs[0].token_ids)
        run = teacher_forced(llm, [sequence], [len(out.prompt_token_ids)])
        errors = isolated_attention_errors(run.layer_inputs, get_scheme("int8_per_token"), None)
        cases.append(SimpleNamespace(layer_qkv=[(i.query, i.key, i.value) for i in run.layer_inputs],
                                     errors=errors, num_tokens=len(sequence)))
    return cases


def check_worst_layer(impl: Any, cases: list[SimpleNamespace]) -> None:
    for case_idx, case in enumerate(cases):
        worst, errors = impl.find_worst_layer(case.layer_qkv)
        table = "\n".join(f"  layer {i}: yours {y:.5f}  measured {m:.5f}" for i, (y, m) in
                          enumerate(zip(errors, case.errors)))
        assert len(errors) == len(case.errors), f"sequence {case_idx}: {len(errors)} errors for {len(case.errors)} layers"
        close = all(abs(y - m) <= ERROR_RTOL * m for y, m in zip(errors, case.errors))
        assert close, f"sequence {case_idx} ({case.num_tokens} tokens): per-layer errors differ from the engine's\n{table}"
        assert case.errors[worst] >= (1 - TIE) * max(case.errors), \
            f"sequence {case_idx}: you picked layer {worst}, the engine measured another as worst\n{table}"


def test_quantize_int8_per_token(impl: Any) -> None:
    check_int8_per_token(impl)


def test_quantize_fp8_and_dequantize(impl: Any) -> None:
    check_fp8(impl)


@pytest.mark.engine
def test_kv_bytes_per_token_equals_the_live_engine(impl: Any, llm: Any) -> None:
    hf = llm.llm_engine.model_config.hf_config
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    got = impl.kv_bytes_per_token(hf.num_hidden_layers, hf.num_key_value_heads, head_dim, "bf16")
    assert got == vi.kv_cache_bytes_per_token(llm), "the live engine's KV cache holds a different number of bytes per token"


def test_kv_bytes_per_token_for_other_configs(impl: Any) -> None:
    check_kv_bytes_configs(impl)


def test_find_worst_layer(impl: Any, measured_layers: list[SimpleNamespace]) -> None:
    check_worst_layer(impl, measured_layers)


# --- The grader itself: wrong answers must fail, readably -----------------------------------

def _per_tensor_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale for the whole tensor: small tokens lose all their levels."""
    scale = (x.float().abs().amax() / 127).view(1, 1, 1)
    return (x.float() / scale).round().to(torch.int8), scale


def _unsaturated_fp8(x: torch.Tensor, scale: torch.Tensor, fp8_dtype: torch.dtype) -> torch.Tensor:
    return (x.float() / scale).to(fp8_dtype)  # overflow becomes NaN / inf


def _bytes_without_scales(num_layers: int, num_kv_heads: int, head_dim: int, scheme: str) -> int:
    return 2 * num_layers * num_kv_heads * head_dim * (2 if scheme == "bf16" else 1)  # forgets per-token scales


def _not_causal_worst_layer(layer_qkv: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> tuple[int, list[float]]:
    """Attends to the future too: a different attention, different errors."""
    errors = []
    for query, key, value in layer_qkv:
        def attend(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(
                query.float().transpose(0, 1), k.float().transpose(0, 1), v.float().transpose(0, 1), enable_gqa=True)
        exact = attend(key, value)
        approx = attend(*(reference.dequantize(*reference.quantize_int8_per_token(t), torch.float32) for t in (key, value)))
        errors.append(float((approx - exact).norm() / exact.norm()))
    return max(range(len(errors)), key=errors.__getitem__), errors


BROKEN = SimpleNamespace(quantize_int8_per_token=_per_tensor_int8, quantize_fp8=_unsaturated_fp8,
                         dequantize=reference.dequantize, kv_bytes_per_token=_bytes_without_scales,
                         find_worst_layer=_not_causal_worst_layer)


def test_grader_catches_wrong_answers(measured_layers: list[SimpleNamespace]) -> None:
    expected = [(check_int8_per_token, "expected one scale per token"),
                (check_fp8, "NaN/inf: saturate first"),
                (check_kv_bytes_configs, "int8_per_token, 4 layers x 2 KV heads x 64: yours 1024 bytes/token, "
                                         "the quantized cache allocates 1056"),
                (lambda impl: check_worst_layer(impl, measured_layers), "per-layer errors differ from the engine's")]
    for check, message in expected:
        with pytest.raises(AssertionError) as failure:
            check(BROKEN)
        assert message in str(failure.value), str(failure.value)


def test_learner_file_mirrors_the_reference() -> None:
    import inspect

    learner = load_implementation("lab5_kv_quant", "learner")
    for name in ("quantize_int8_per_token", "quantize_fp8", "dequantize", "kv_bytes_per_token", "find_worst_layer"):
        assert inspect.signature(getattr(learner, name)) == inspect.signature(getattr(reference, name)), name
