"""What tests/test_lab5_kv_quantization.py and tests/test_lab5_kv_quantization_predictions.py share:
one real vLLM engine per KV dtype (bf16 "auto", "fp8", "fp8_e5m2") on the whole phrasebook.

The engines run one after another in a fresh process (tests/fresh_process.py says why), once per
pytest process (`kv_dtype_runs`): tests/workers.py puts both modules in one group.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

from labs.lab5_kv_quantization import vllm_fp8
from labs.lab5_kv_quantization.vllm_fp8 import VllmKVRun
from tests.fresh_process import record_in_fresh_process

KV_DTYPES = ("auto", "fp8", "fp8_e5m2")


def record_kv_dtype_runs(out_path: str, *kv_cache_dtypes: str) -> None:
    """Engine side (a fresh process): one engine per dtype on the phrasebook, each freed; the runs as JSON."""
    import os

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from labs.lab5_kv_quantization.measure import phrasebook_messages
    from labs.lab5_kv_quantization.vllm_fp8 import run_vllm_kv_dtype

    runs = [run_vllm_kv_dtype(d, phrasebook_messages(), "tiny-phrasebook") for d in kv_cache_dtypes]
    Path(out_path).write_text(json.dumps([r.__dict__ for r in runs]), encoding="utf-8")


@functools.cache
def kv_dtype_runs() -> list[VllmKVRun]:
    """[auto, fp8, fp8_e5m2] runs on tiny-phrasebook's 320 prompts; fp8 ones skipped (with the reason) where
    the hardware cannot run them."""
    reason = vllm_fp8.unsupported_reason("fp8")
    dtypes = KV_DTYPES[:1] if reason else KV_DTYPES
    out_path = Path(tempfile.mkdtemp(prefix="kv-dtype-runs-")) / "runs.json"
    runs = [VllmKVRun(**d) for d in record_in_fresh_process(record_kv_dtype_runs, out_path, *dtypes, timeout_s=400)]
    return runs + [VllmKVRun(d, skipped=reason) for d in KV_DTYPES[len(runs):]]
