"""What each notebook must print when it runs on `tiny-llama` instead of `tiny-phrasebook`.

tiny-llama is a Llama-architecture model with random weights and 9 query heads over 3 KV heads:
another architecture, heads that tensor parallelism cannot split, and text that is noise. A lab
on it must say what it cannot do in one sentence and never print a traceback, a failed target it
never promised, or ✗ marks on answers nobody expected to be right. tests/test_notebooks.py
executes the notebooks with `execute_on_model` and checks each with `problems`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from labs.core.notebooks import NOTEBOOKS_DIR, ExecutedNotebook, execute_notebook

ANY_MODEL = "tiny-llama"
# Printed only when a lab judges something it should not on this model, or fails.
FORBIDDEN = ("Traceback", "✗", "TARGET MISSED", "NOT met")


@dataclass(frozen=True)
class Expectation:
    """Attributes:
        must_print: strings the notebook's text outputs must contain (each a sign it ran on the model
            and handled what the model cannot do).
        forbidden: strings that must not appear.
    """

    must_print: tuple[str, ...]
    forbidden: tuple[str, ...] = field(default=FORBIDDEN)


ANY_MODEL_NOTEBOOKS: dict[str, Expectation] = {
    "01_basic_inference.ipynb": Expectation((
        "models/tiny-llama", "4. model runner  LlamaForCausalLM",
        "tiny-llama has random weights",  # translations shown, not checked
        "6. detokenizer")),
    "02_paged_attention.ipynb": Expectation((
        "models/tiny-llama", "TTFT with a prefix hit", "paged:", "contiguous:")),
    "03_continuous_batching.ipynb": Expectation((
        "models/tiny-llama", "preempted after computing",
        "static batching takes", "the same on any machine",  # the step ratio, machine-independent
        "a decode step of 8 requests takes")),  # and the step time that turns it into throughput
    "04_tensor_parallel.ipynb": Expectation((
        "tiny-llama has 9 query heads and 3 KV heads", "This section is skipped",
        "identical")),  # sections 1-4 still ran on tiny-phrasebook
    "05_kv_quantization.ipynb": Expectation((
        "models/tiny-llama", "64 phrasebook prompts are answered", "/64  -> bytes within the target", "fp8 (calibrated scales)",
        "shown, not judged"),
        # four engines start in the kernel: vLLM re-configures its logging at each, and its notes nobody
        # can act on stay filtered (labs.core.quiet_output)
        forbidden=FORBIDDEN + ("is already registered. Overwriting", "Unknown vLLM environment variable",
                               "The global random seed is set", "is not found in LD_PRELOAD")),
    "06_profiling.ipynb": Expectation((
        "models/tiny-llama", "engine steps in the trace", "memory bandwidth")),
    "07_speculative_decoding.ipynb": Expectation((
        "models/tiny-llama", "tiny-llama has random weights: its answers repeat one token",
        "repeating: n-gram took", "vLLM's counters during the run")),
    "08_structured_outputs.ipynb": Expectation((
        "models/tiny-llama", "token ids the JSON schema allows at the first step", "max_tokens=64: finish_reason=")),
    "09_multi_lora.ipynb": Expectation((  # the adapters fit tiny-phrasebook only: it says so and runs that
        "Your model is 'tiny-llama', but this lab runs on tiny-phrasebook whatever you select",
        "models/tiny-phrasebook", "mixed batch")),
    "10_failure_injection.ipynb": Expectation((
        "models/tiny-llama", "Preemption storm:", "the knob that ends the storm", "[hung] diagnosed: hung")),
}


def execute_on_model(name: str, model: str = ANY_MODEL, out_dir: Path | None = None) -> ExecutedNotebook:
    """Execute notebook `name` with `VLLM_MODEL=model` in its kernel's environment (ours is left alone).

    Args:
        name: the notebook's file name in notebooks/.
        model: what `VLLM_MODEL` selects for the run.
        out_dir: where the executed copy and its HTML go (see `execute_notebook`).
    """
    return execute_notebook(NOTEBOOKS_DIR / name, out_dir=out_dir, env={"VLLM_MODEL": model})


def problems(name: str, text: str) -> list[str]:
    """What is wrong with notebook `name`'s text outputs on tiny-llama (empty: nothing).

    Args:
        name: the notebook's file name, a key of `ANY_MODEL_NOTEBOOKS`.
        text: `ExecutedNotebook.text_outputs()`.
    """
    expected = ANY_MODEL_NOTEBOOKS[name]
    found = [f"missing: {s!r}" for s in expected.must_print if s not in text]
    found += [f"printed: {line.strip()!r}" for line in text.splitlines() if any(s in line for s in expected.forbidden)]
    return found
