"""Lab 1 (basic inference): the code behind notebooks/01_basic_inference.ipynb and `make demo`.

The centre piece is `trace_request`: it drives the real engine one `step()` at a time and records
what each stage did with one request (tokenizer -> scheduler -> KV blocks -> model runner ->
sampler -> detokenizer), read from the live engine through `labs.core.vllm_internals`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from labs.core import vllm_internals as vi
from labs.core.live import EngineObserver

_trace_ids = itertools.count()


@dataclass
class StepRecord:
    """One engine step, as seen by one request."""

    step: int
    num_scheduled_tokens: int  # tokens of this request the scheduler let through this step
    num_cached_tokens: int  # prompt tokens found in the prefix cache this step (not computed)
    num_computed_tokens: int  # tokens whose K/V are now in the cache
    block_ids: list[int]  # the request's block table after the step
    new_token_ids: list[int]  # what the sampler produced this step
    text: str  # the detokenizer's text so far
    finished: bool


@dataclass
class RequestTrace:
    """The life of one request through the engine."""

    prompt: str
    prompt_token_ids: list[int]
    prompt_tokens: list[str]
    block_size: int
    model_class: str
    kv_cache_shape: tuple[int, ...]  # per layer, as the model runner allocated it
    kv_cache_dtype: str
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def output_text(self) -> str:
        return self.steps[-1].text if self.steps else ""

    @property
    def output_token_ids(self) -> list[int]:
        return [t for s in self.steps for t in s.new_token_ids]

    @property
    def num_prompt_blocks(self) -> int:
        """Blocks holding the prompt right after prefill (the first step that computed it all)."""
        for s in self.steps:
            if s.num_computed_tokens >= len(self.prompt_token_ids):
                return len(s.block_ids)
        return 0

    def describe(self, max_steps: int = 6) -> str:
        n = len(self.prompt_token_ids)
        shown = " ".join(repr(t) for t in self.prompt_tokens[:12]) + (" ..." if n > 12 else "")
        lines = [
            f"1. tokenizer     {n} prompt tokens: {shown}",
            f"2. scheduler     step 1 scheduled {self.steps[0].num_scheduled_tokens} tokens (prefill"
            + (f"; the first {self.steps[0].num_cached_tokens} were found in the prefix cache"
               if self.steps[0].num_cached_tokens else ": the whole prompt")
            + "), then 1 token per step (decode)",
            f"3. KV blocks     prompt -> {self.num_prompt_blocks} block(s) of {self.block_size} tokens: "
            f"{self.steps[0].block_ids}",
            f"4. model runner  {self.model_class}; KV cache per layer {self.kv_cache_shape} {self.kv_cache_dtype}",
            "5. sampler       one token per step:",
        ]
        for s in self.steps[:max_steps]:
            lines.append(f"     step {s.step}: computed={s.num_computed_tokens:3d} blocks={s.block_ids} "
                         f"sampled={s.new_token_ids} text={s.text!r}")
        if len(self.steps) > max_steps:
            lines.append(f"     ... {len(self.steps) - max_steps} more steps")
        lines.append(f"6. detokenizer  {self.output_text!r}")
        return "\n".join(lines)


def render_chat(llm: Any, messages: list[dict[str, str]]) -> str:
    """The exact prompt text vLLM's chat endpoint builds from `messages` (the model's chat template)."""
    return llm.get_tokenizer().apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def trace_request(llm: Any, prompt: str, sampling_params: Any, max_steps: int = 256) -> RequestTrace:
    """Run one request alone through the engine, step by step, recording every stage.

    Args:
        llm: a `vllm.LLM` made with `labs.core.engine.make_llm` (engine core in this process).
        prompt: the prompt text (use `render_chat` for chat messages).
        sampling_params: a `vllm.SamplingParams`.
        max_steps: safety bound on the number of engine steps.

    Returns:
        The trace; `trace.describe()` prints it stage by stage.
    """
    tokenizer = llm.get_tokenizer()
    prompt_token_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    runner_kv = vi.kv_cache_tensors(llm)
    trace = RequestTrace(
        prompt=prompt,
        prompt_token_ids=list(prompt_token_ids),
        prompt_tokens=[tokenizer.decode([t]) for t in prompt_token_ids],
        block_size=vi.kv_cache_snapshot(llm).block_size,
        model_class=type(vi.model(llm)).__name__,
        kv_cache_shape=tuple(runner_kv[0].shape),
        kv_cache_dtype=str(runner_kv[0].dtype).removeprefix("torch."),
    )
    if llm.llm_engine.has_unfinished_requests():
        raise RuntimeError("trace_request needs an idle engine: other requests would share its steps.")
    from labs.core.vllm_internals import RequestOutputKind

    # LLM.generate/chat switch the params they are given to FINAL_ONLY; we want every step's output.
    params = sampling_params.clone()
    params.output_kind = RequestOutputKind.CUMULATIVE
    request_id = f"trace-{next(_trace_ids)}"
    observer = EngineObserver(llm)
    observer.add_request(request_id, list(prompt_token_ids), params)
    num_computed_tokens = 0
    for _ in range(max_steps):
        obs = observer.step()
        out = observer.last_step_outputs.get(request_id)
        previous = trace.steps[-1] if trace.steps else None
        num_cached = obs.num_cached_tokens.get(request_id, 0)
        num_scheduled = obs.num_scheduled_tokens.get(request_id, 0)
        num_computed_tokens += num_cached + num_scheduled
        token_ids = list(out.outputs[0].token_ids) if out else trace.output_token_ids
        trace.steps.append(StepRecord(
            step=obs.step,
            num_scheduled_tokens=num_scheduled,
            num_cached_tokens=num_cached,
            num_computed_tokens=num_computed_tokens,
            # a finished request is freed inside the step: keep the block table it last had
            block_ids=obs.block_tables.get(request_id, previous.block_ids if previous else []),
            new_token_ids=token_ids[len(trace.output_token_ids):],
            text=out.outputs[0].text if out else trace.output_text,
            finished=bool(out and out.finished),
        ))
        if trace.steps[-1].finished:
            break
    return trace


@dataclass(frozen=True)
class EngineFacts:
    """The live numbers `make demo` prints about the engine and one prompt."""

    num_kv_blocks: int
    num_free_blocks: int
    block_size: int
    num_prompt_tokens: int
    num_prompt_blocks: int


def engine_facts(llm: Any, trace: RequestTrace) -> EngineFacts:
    snap = vi.kv_cache_snapshot(llm)
    return EngineFacts(snap.num_blocks, snap.num_free_blocks, snap.block_size,
                       len(trace.prompt_token_ids), trace.num_prompt_blocks)


def sampling_showcase(llm: Any, prompt: str, max_tokens: int = 24) -> list[dict[str, Any]]:
    """The same prompt under different `SamplingParams`: what each knob does to the output.

    Returns:
        One row per setting: its name, the params, and the text(s) generated.
    """
    from vllm import SamplingParams

    settings = {
        "greedy (temperature=0)": SamplingParams(temperature=0.0, max_tokens=max_tokens),
        "greedy again: identical": SamplingParams(temperature=0.0, max_tokens=max_tokens),
        "temperature=1.0, seed=1": SamplingParams(temperature=1.0, seed=1, max_tokens=max_tokens),
        "temperature=1.0, seed=1 again: identical": SamplingParams(temperature=1.0, seed=1, max_tokens=max_tokens),
        "temperature=1.0, seed=2": SamplingParams(temperature=1.0, seed=2, max_tokens=max_tokens),
        "top_p=0.5 (only the most likely half of the mass)": SamplingParams(temperature=1.0, top_p=0.5, seed=1,
                                                                           max_tokens=max_tokens),
        "n=3 samples of one prompt": SamplingParams(temperature=1.0, n=3, seed=3, max_tokens=max_tokens),
    }
    rows = []
    for name, params in settings.items():
        (out,) = llm.generate([prompt], params, use_tqdm=False)
        rows.append({"setting": name, "texts": [c.text for c in out.outputs]})
    return rows


def tokenize_round_trip(tokenizer: Any, text: str) -> dict[str, Any]:
    """Text -> token ids -> tokens -> text: byte-level BPE loses nothing, whatever the language."""
    token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.decode(token_ids)
    return {"text": text, "token_ids": token_ids,
            # each token's own bytes as text; a piece that splits a UTF-8 character shows as '\ufffd'
            "pieces": [tokenizer.decode([t]) for t in token_ids],
            "decoded": decoded, "round_trip_ok": decoded == text}
