"""What tests/test_lab6_profiling.py and tests/test_lab6_profiling_predictions.py share: one profiled run.

One per pytest process (`profiled_run`): both modules read the same run, and tests/workers.py puts
them in one group, so a session profiles once.

The profiler needs an engine built with `profiler_config`, so the run happens in a fresh process
(tests/fresh_process.py says why): 3 prompts (20, 23 and 26 tokens), a warm-up that is not
profiled, then one profiled `generate` of 4 output tokens each (`ignore_eos`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fresh_process import record_in_fresh_process

NUM_PROMPTS = 3
MAX_TOKENS = 4
_profiled: dict[str, Any] = {}  # this process's run, once made (read-only for the tests)


def record_profile(out_path: str, trace_dir: str) -> None:
    """Engine side (a fresh process): profile one generate into `trace_dir`; what it gave to `out_path` as JSON."""
    from vllm import SamplingParams

    from labs.core.engine import free_llm, make_llm
    from labs.lab6_profiling import profiling as prof

    llm = make_llm(verbose=False, profiler_config=prof.profiler_config(Path(trace_dir)))
    prompts = [[10 + i + j for j in range(20 + 3 * i)] for i in range(NUM_PROMPTS)]  # 20, 23, 26 prompt tokens
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)  # warm-up, not profiled
    result = prof.profile_generate(llm, [{"prompt_token_ids": p} for p in prompts], params, prefix="test")
    free_llm(llm)
    record = {"trace_path": str(result.trace_path), "num_prompt_tokens": sum(map(len, prompts)),
              "top_ops": result.top_ops.to_dict("records"), "vllm_table": result.vllm_table}
    Path(out_path).write_text(json.dumps(record), encoding="utf-8")


def profile_in_fresh_process(trace_dir: Path) -> dict[str, Any]:
    """The profiled run, its trace in `trace_dir`: trace_path, num_prompt_tokens, top_ops, vllm_table, trace_dir."""
    out_path = trace_dir.with_name(f"{trace_dir.name}-record.json")  # beside the traces, not among them
    return {**record_in_fresh_process(record_profile, out_path, str(trace_dir)), "trace_dir": trace_dir}


def profiled_run(tmp_path_factory: Any) -> dict[str, Any]:
    """This process's profiled run (`profile_in_fresh_process`), made on first use in its own temp folder."""
    if not _profiled:
        _profiled.update(profile_in_fresh_process(tmp_path_factory.mktemp("profiles")))
    return _profiled
