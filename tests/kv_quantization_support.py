"""What tests/test_lab5_kv_quantization.py and tests/test_lab5_kv_quantization_predictions.py share:
one real vLLM engine per KV dtype (bf16 "auto", "fp8", "fp8_e5m2") on the whole phrasebook.

The engines run one after another in a fresh process (two engines cannot live in one), once per
pytest process (`kv_dtype_runs`): tests/workers.py puts both modules in one group.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from labs.lab5_kv_quantization import vllm_fp8
from labs.lab5_kv_quantization.vllm_fp8 import VllmKVRun

KV_DTYPES = ("auto", "fp8", "fp8_e5m2")
_runs: list[VllmKVRun] = []  # this process's runs, once made


def kv_dtype_runs() -> list[VllmKVRun]:
    """[auto, fp8, fp8_e5m2] runs on tiny-phrasebook's 320 prompts; fp8 ones skipped (with the reason) where
    the hardware cannot run them."""
    if _runs:
        return _runs
    reason = vllm_fp8.unsupported_reason("fp8")
    dtypes = KV_DTYPES[:1] if reason else KV_DTYPES
    script = textwrap.dedent(f"""
        import json, os
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from labs.lab5_kv_quantization.measure import phrasebook_messages
        from labs.lab5_kv_quantization.vllm_fp8 import run_vllm_kv_dtype
        runs = [run_vllm_kv_dtype(d, phrasebook_messages(), "tiny-phrasebook") for d in {dtypes!r}]
        print("RESULT", json.dumps([r.__dict__ for r in runs]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=400)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    _runs.extend(VllmKVRun(**d) for d in json.loads(line[len("RESULT "):]))
    _runs.extend(VllmKVRun(d, skipped=reason) for d in KV_DTYPES[len(_runs):])
    return _runs
