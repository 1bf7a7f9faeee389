"""The mini engine built from the chosen parts, run in each setting and compared token for token."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any

from labs.core.grading import ENGINE_PARTS
from labs.your_engine.parts import Parts, engine_parts
from labs.your_engine.reference import MAX_TOKENS, MODEL, Reference, phrasebook_messages


@dataclass(frozen=True)
class Setting:
    name: str
    description: str
    config: dict[str, Any]
    passes: int = 1  # the prompts go through the same engine this many times, one wave after the other
    must_preempt: bool = False
    must_hit_prefix_cache: bool = False


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("default", "plenty of KV blocks, prefix caching off", {"enable_prefix_caching": False}),
    Setting("scarce-kv-blocks", "12 KV blocks (11 usable) for up to 8 requests: preemption",
            {"num_kv_blocks": 12, "max_num_seqs": 8, "max_num_batched_tokens": 64}, must_preempt=True),
    Setting("prefix-caching", "prefix caching on, the prompts sent twice: the second wave hits the first's blocks",
            {"enable_prefix_caching": True}, passes=2, must_hit_prefix_cache=True),
    Setting("tensor-parallel-2", "every MLP split over 2 ranks (threads) with Lab 4's shards and one all-reduce",
            {"enable_prefix_caching": False, "tensor_parallel_size": 2}),
)}


# --- the mini engine's side -----------------------------------------------------------------------

@dataclass
class Difference:
    prompt_index: int
    prompt_ja: str
    position: int  # output token index where the two part
    yours: int | None  # token id; None: your engine had stopped
    vllm: int | None
    yours_text: str
    vllm_text: str
    same_prefix_text: str
    wave: int = 1


@dataclass
class SettingResult:
    setting: Setting
    num_prompts: int
    num_equal: int = 0
    first_difference: Difference | None = None
    num_preemptions: int = 0
    num_prefix_hit_prompts: int = 0
    num_cached_tokens: int = 0
    error: str | None = None
    seconds: float = 0.0
    parts_in_play: str = ""

    @property
    def ok(self) -> bool:
        return (self.error is None and self.num_equal == self.num_prompts
                and (self.num_preemptions > 0 or not self.setting.must_preempt)
                and (self.num_prefix_hit_prompts > 0 or not self.setting.must_hit_prefix_cache))

    def report(self) -> str:
        head = f"{self.setting.name:<17}"
        if self.error is not None:
            return f"{head} CRASHED after {self.seconds:.1f}s (your parts in play: {self.parts_in_play}):\n{self.error}"
        notes = [f"{self.seconds:.1f}s"]
        if self.setting.must_preempt or self.num_preemptions:
            notes.append(f"{self.num_preemptions} preemptions")
        if self.setting.must_hit_prefix_cache or self.num_prefix_hit_prompts:
            notes.append(f"{self.num_prefix_hit_prompts} prompts hit the prefix cache, {self.num_cached_tokens} tokens")
        line = f"{head} {self.num_equal}/{self.num_prompts} equal  ({', '.join(notes)})"
        if self.setting.must_preempt and not self.num_preemptions:
            line += "\n    no request was preempted: this setting did not test what it is for"
        if self.setting.must_hit_prefix_cache and not self.num_prefix_hit_prompts:
            line += "\n    no prompt hit the prefix cache: this setting did not test what it is for"
        d = self.first_difference
        if d is not None:
            wave = f" (wave {d.wave})" if self.setting.passes > 1 else ""
            yours = "<stopped>" if d.yours is None else f"{d.yours} {d.yours_text!r}"
            vllm = "<stopped>" if d.vllm is None else f"{d.vllm} {d.vllm_text!r}"
            line += (f"\n    first difference: prompt {d.prompt_index}{wave} {d.prompt_ja!r}, output token {d.position}:"
                     f" yours {yours}, vLLM {vllm}\n    same until there: {d.same_prefix_text!r}"
                     f"\n    your parts in play: {self.parts_in_play}")
        return line


def render_prompts(tokenizer: Any, messages: list[list[dict[str, str]]]) -> list[list[int]]:
    """As vLLM's `LLM.chat` (and the mini `LLM.chat`): the chat template to text, then tokens."""
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def generate(llm: Any, prompt_ids: list[list[int]], max_tokens: int) -> tuple[list[list[int]], list[int]]:
    """Greedy outputs and prefix-cache hits, stepping the engine by hand (a stuck scheduler is caught)."""
    from labs.core.mini.llm import SamplingParams

    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    request_ids = [engine.add_request(ids, params) for ids in prompt_ids]
    finished: dict[str, Any] = {}
    max_steps = 4 * sum(len(ids) + max_tokens for ids in prompt_ids) + 100
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            break
        for request in engine.step():
            finished[request.request_id] = request
    else:
        raise RuntimeError(f"{max_steps} steps and requests are still unfinished: the scheduler makes no progress")
    missing = [r for r in request_ids if r not in finished]
    if missing:
        raise RuntimeError(f"{len(missing)} requests never finished (first: {missing[0]})")
    return ([list(finished[r].output_token_ids) for r in request_ids],
            [engine.pop_num_cached_tokens(r) for r in request_ids])


def _first_difference(outputs: list[list[int]], reference: Reference, tokenizer: Any, wave: int) -> Difference | None:
    for i, (mine, theirs) in enumerate(zip(outputs, reference.output_token_ids)):
        if mine == theirs:
            continue
        pos = next((k for k, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
        yours = mine[pos] if pos < len(mine) else None
        vllm = theirs[pos] if pos < len(theirs) else None
        decode = lambda t: "" if t is None else tokenizer.decode([t])  # noqa: E731
        return Difference(i, reference.prompts_ja[i], pos, yours, vllm, decode(yours), decode(vllm),
                          tokenizer.decode(mine[:pos], skip_special_tokens=True), wave)
    return None


def compare_setting(setting: Setting, parts: Parts, reference: Reference, max_tokens: int = MAX_TOKENS) -> SettingResult:
    """Run the mini engine built from `parts` in `setting` and compare its tokens with vLLM's."""
    from labs.core.mini.llm import LLM

    _, messages = phrasebook_messages()
    n = len(reference.output_token_ids)
    result = SettingResult(setting, n, parts_in_play=parts.in_play())
    start = time.monotonic()
    equal = [True] * n
    try:
        with engine_parts(parts):
            llm = LLM(MODEL, **setting.config)
            prompt_ids = render_prompts(llm.get_tokenizer(), messages[:n])
            if prompt_ids != reference.prompt_token_ids:
                i = next(k for k, (a, b) in enumerate(zip(prompt_ids, reference.prompt_token_ids)) if a != b)
                raise RuntimeError(f"prompt {i} renders to other tokens than vLLM's: a chat-template mismatch, "
                                   "not the engine")
            for wave in range(1, setting.passes + 1):
                outputs, cached = generate(llm, prompt_ids, max_tokens)
                equal = [e and o == r for e, o, r in zip(equal, outputs, reference.output_token_ids)]
                if result.first_difference is None:
                    result.first_difference = _first_difference(outputs, reference, llm.get_tokenizer(), wave)
                if wave > 1 or setting.passes == 1:
                    result.num_prefix_hit_prompts += sum(c > 0 for c in cached)
                    result.num_cached_tokens += sum(cached)
            result.num_preemptions = llm.llm_engine.num_preemptions
    except Exception:  # noqa: BLE001 - a learner's part may raise anything: report it, in full
        result.error = "    " + traceback.format_exc(limit=-6).strip().replace("\n", "\n    ")
    result.num_equal = sum(equal)
    result.seconds = time.monotonic() - start
    return result


def compare(parts: Parts, reference: Reference, settings: list[str] | None = None,
            max_tokens: int = MAX_TOKENS, echo: Any = print) -> list[SettingResult]:
    results = []
    for name in settings or list(SETTINGS):
        results.append(compare_setting(SETTINGS[name], parts, reference, max_tokens))
        echo(results[-1].report())
    return results


def smoke(parts: Parts, num_prompts: int = 8) -> str:
    """The table line of `make progress`: does your engine run, and give the reference engine's tokens?

    Compares a few prompts with the all-reference mini engine (which the tests hold equal to vLLM),
    so no vLLM engine needs to start.
    """
    from labs.core.mini.llm import LLM

    _, messages = phrasebook_messages()
    messages = messages[:num_prompts]
    ref_llm = LLM(MODEL)
    prompt_ids = render_prompts(ref_llm.get_tokenizer(), messages)
    expected, _ = generate(ref_llm, prompt_ids, MAX_TOKENS)
    ja, _ = phrasebook_messages()
    reference = Reference(ja[:num_prompts], prompt_ids, expected)
    if not parts.yours:
        return (f"runs on the reference parts ({num_prompts} prompts); none of yours yet "
                f"({', '.join(ENGINE_PARTS)} join once their graders pass)")
    result = compare_setting(SETTINGS["default"], parts, reference)
    if result.error is not None:
        lines = [line.strip() for line in result.error.splitlines()]
        where = next((line for line in reversed(lines) if line.startswith("File ")), "")
        return f"CRASHES with your {parts.in_play()}: {lines[-1]} ({where})"
    if result.first_difference is not None:
        d = result.first_difference
        return (f"runs, but differs from the reference engine: prompt {d.prompt_index}, output token {d.position} "
                f"(your parts: {parts.in_play()}; python -m labs.your_engine for more)")
    return f"runs: {num_prompts}/{num_prompts} prompts equal to the reference engine with your {parts.in_play()}"
