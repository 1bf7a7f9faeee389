"""Lab 6's hooks into the live engine: vLLM's torch profiler and per-stage timers.

Why here: the profiler object and the methods each stage of a request runs through sit on
vLLM's worker, model runner, scheduler and front end, at attribute paths that are not public
API. Labs get them by name and never spell the paths themselves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from labs.core.vllm_internals.live_engine import engine_core, llm_engine, model_runner


def worker_torch_profiler(llm_or_engine: Any) -> Any:
    """The `torch.profiler.profile` vLLM's worker ran for the last `start_profile()`/`stop_profile()`.

    Why reach for it: vLLM writes the trace file and prints a table, but the profiler object's
    `key_averages()` is what a lab can turn into a DataFrame. It lives on the worker's
    `TorchProfilerWrapper` (vllm/profiler/wrapper.py), created by the first `start_profile()`.

    Returns:
        The `torch.profiler.profile`; raises if the engine was built without `profiler_config`.
    """
    wrapper = getattr(engine_core(llm_or_engine).model_executor.driver_worker.worker, "profiler", None)
    profile = getattr(wrapper, "profiler", None)
    if profile is None:
        raise RuntimeError("vLLM's worker has no torch profiler yet: build the engine with "
                           "profiler_config={'profiler': 'torch', 'torch_profiler_dir': ...} and call "
                           "llm.start_profile() / llm.stop_profile() first.")
    return profile


def profiler_trace_dir(llm_or_engine: Any) -> Path:
    """Where vLLM's torch profiler writes traces: the engine's `profiler_config.torch_profiler_dir`."""
    return Path(llm_engine(llm_or_engine).vllm_config.profiler_config.torch_profiler_dir)


def engine_stage_methods(llm_or_engine: Any) -> dict[str, list[tuple[Any, str]]]:
    """Which (object, method name) does each stage of a request's life, in vLLM 0.32.0.

    Why these five: they are the whole path of a request through `LLM.generate` (Lab 1's life of
    a request). Tokenization runs once per prompt in the renderer; every engine step then
    schedules (`schedule`, and `update_from_output` to append the sampled tokens), runs the model
    runner's `execute_model` (input preparation, the forward pass, the logits) and `sampler`,
    and the front end's output processor detokenizes the new tokens into text.
    Wrap these attributes on these single instances only; nothing else in the process changes.
    """
    engine = llm_engine(llm_or_engine)
    core = engine_core(llm_or_engine)
    runner = model_runner(llm_or_engine)
    return {
        "tokenization": [(engine.renderer, "tokenize_prompt")],
        "scheduling": [(core.scheduler, "schedule"), (core.scheduler, "update_from_output")],
        "forward": [(runner, "execute_model")],
        "sampling": [(runner.sampler, "forward")],
        "detokenization": [(engine.output_processor, "process_outputs")],
    }


@contextmanager
def timed_engine_stages(llm_or_engine: Any) -> Iterator[dict[str, list[float]]]:
    """Time every call of the `engine_stage_methods`; put the methods back on exit.

    Why instance wrappers: they measure the real engine with nothing else changed, and only for
    the `with` block; a method already wrapped on the instance (`record_scheduler_outputs`) is
    wrapped again and restored as it was.

    Yields:
        stage -> seconds of each call, filled while the block runs.
    """
    durations: dict[str, list[float]] = {}
    installed: list[tuple[Any, str, Any]] = []  # (object, name, what its __dict__ held before)

    def timed(stage: str, method: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                durations[stage].append(time.perf_counter() - start)
        return wrapper

    try:
        for stage, pairs in engine_stage_methods(llm_or_engine).items():
            durations[stage] = []
            for obj, name in pairs:
                installed.append((obj, name, vars(obj).get(name)))
                setattr(obj, name, timed(stage, getattr(obj, name)))
        yield durations
    finally:
        for obj, name, before in reversed(installed):
            if before is None:
                delattr(obj, name)  # back to the class's method
            else:
                setattr(obj, name, before)
