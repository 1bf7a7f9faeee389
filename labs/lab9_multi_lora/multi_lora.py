"""Lab 9's logic: two LoRA adapters of tiny-phrasebook served side by side by one vLLM engine.

Why one engine for several adapters: an adapter is a few hundred KB of A/B matrices on top of base
weights that all requests share, so vLLM keeps `max_loras` adapter slots next to one copy of the
base model and lets every request of a batch pick its own slot (or none). This module starts such
an engine, asks it the same question with each adapter, records which request ran with which
adapter in each step (`labs.core.vllm_internals.lora.record_lora_batches`), measures what mixing
adapters in one batch costs, and builds the server flags that do the same over HTTP.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
from vllm import SamplingParams

from labs.core.engine import make_llm
from labs.core.model_traits import model_traits
from labs.core.models.adapters import ADAPTER_NAMES, RECIPES, adapter_dir, adapter_pairs
from labs.core.models.phrasebook import translation_messages
from labs.core.models.resolve import ModelNotFoundError, resolve_model
from labs.core.vllm_internals.lora import LoraBatch, lora_request, record_lora_batches

LAB_MODEL = "tiny-phrasebook"  # the adapters are deltas to these exact weights: no other model fits them
MAX_LORA_RANK = 16  # the largest rank of the two adapters (english: 16, glossary: 8); vLLM allows 1, 8, 16, 32, ...
# One slot more than adapters: vLLM 0.32.0's CPU LoRA ops read a no-adapter token's A/B at index -1,
# i.e. the LAST slot (the GPU kernels skip -1; vllm-project/vllm PR #48421 proposes the fix). A slot
# that stays empty holds zeros, so base requests mixed with adapter requests stay exact.
MAX_LORAS = len(ADAPTER_NAMES) + 1
ADAPTER_IDS = {name: i for i, name in enumerate(ADAPTER_NAMES, start=1)}  # engine-wide ids, >= 1


def other_model_note() -> str | None:
    """One sentence when the learner's model (`VLLM_MODEL`, else the one found locally) is not the one the
    adapters fit (None: it is, or none could be resolved)."""
    try:
        chosen = resolve_model()
    except ModelNotFoundError:
        return None
    if model_traits(chosen.path).name == LAB_MODEL:
        return None
    return (f"Your model is {chosen.name!r}, but this lab runs on {LAB_MODEL} whatever you select: a LoRA adapter is a "
            f"low-rank delta to the exact weights it was trained on, and the shipped adapters were trained on "
            f"{LAB_MODEL}'s (to serve your own model's adapters, pass them to `--lora-modules`).")


def make_lora_llm(max_loras: int = MAX_LORAS, max_lora_rank: int = MAX_LORA_RANK, **engine_kwargs: Any) -> Any:
    """An in-process engine on tiny-phrasebook with LoRA enabled (`max_loras` slots at `max_lora_rank`).

    Prints `other_model_note()` first when the learner's `VLLM_MODEL` names another model.
    """
    note = other_model_note()
    if note:
        print(note)
    return make_llm(LAB_MODEL, enable_lora=True, max_loras=max_loras, max_lora_rank=max_lora_rank,
                    inspectable=True, **engine_kwargs)


@functools.cache
def request_for(adapter: str | None) -> Any:
    """The `LoRARequest` of adapter `adapter` (None: the base model, no adapter).

    Cached: checking the adapter's recipe key hashes the data (~10 ms), and the same request object
    for every request keeps that cost out of the timings below.
    """
    return None if adapter is None else lora_request(adapter, ADAPTER_IDS[adapter], str(adapter_dir(adapter)))


def translate(llm: Any, sentences: list[str], adapters: list[str | None], max_tokens: int = 48) -> list[str]:
    """Greedy answers to the phrasebook prompt for each sentence, request i with adapter `adapters[i]`.

    All requests go in one `llm.chat` call, so they share batches whatever their adapters.
    """
    outputs = llm.chat([translation_messages(ja) for ja in sentences],
                       SamplingParams(max_tokens=max_tokens, temperature=0.0),
                       lora_request=[request_for(a) for a in adapters], use_tqdm=False)
    return [o.outputs[0].text for o in outputs]


def compare_adapters(llm: Any, sentences: list[str]) -> pd.DataFrame:
    """One row per sentence: the base model's answer and each adapter's, all from one mixed batch."""
    columns: list[str | None] = [None, *ADAPTER_NAMES]
    answers = translate(llm, [ja for ja in sentences for _ in columns], [a for _ in sentences for a in columns])
    rows = [{"ja": ja, **{(a or "base"): answers[i * len(columns) + j] for j, a in enumerate(columns)}}
            for i, ja in enumerate(sentences)]
    return pd.DataFrame(rows)


def expected_answer(adapter: str, ja: str) -> str | None:
    """What adapter `adapter` was trained to answer for `ja` (None: not in its data)."""
    return dict(adapter_pairs(adapter)).get(ja)


@dataclass(frozen=True)
class MixedRun:
    """A mixed batch recorded step by step, and its answers."""

    batches: list[LoraBatch]
    adapters: list[str | None]
    answers: list[str]

    def steps_table(self) -> pd.DataFrame:
        """Per engine step: how many requests ran with each adapter, tokens, and the slot layout."""
        names = {v: k for k, v in ADAPTER_IDS.items()} | {0: "base"}
        rows = []
        for step, b in enumerate(self.batches):
            row: dict[str, Any] = {"step": step, "requests": len(b.req_ids), "tokens": sum(b.num_tokens)}
            for lora_id, name in sorted(names.items()):
                row[name] = sum(1 for i in b.lora_ids if i == lora_id)
            row["slots"] = " | ".join(names.get(s, "-") if s is not None else "free" for s in b.slots)
            rows.append(row)
        return pd.DataFrame(rows).set_index("step")

    def first_step_tokens(self) -> pd.DataFrame:
        """The first (prefill) step: per request, its adapter id, token count and the slots its tokens read."""
        b = self.batches[0]
        rows, start = [], 0
        for req_id, lora_id, n in zip(b.req_ids, b.lora_ids, b.num_tokens):
            slots = sorted(set(b.token_slots[start:start + n]))
            rows.append({"request": req_id, "lora_id": lora_id, "tokens": n, "token slots": slots})
            start += n
        return pd.DataFrame(rows)


def mixed_run(llm: Any, sentences: list[str], adapters: list[str | None], max_tokens: int = 32) -> MixedRun:
    """Run requests with mixed adapters in one `llm.chat` call while every step's LoRA mapping is recorded."""
    with record_lora_batches(llm) as batches:
        answers = translate(llm, sentences, adapters, max_tokens)
    return MixedRun(list(batches), list(adapters), answers)


def _timed_chat(llm: Any, sentences: list[str], adapters: list[str | None], max_tokens: int) -> float:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)  # same work per request
    messages, requests = [translation_messages(ja) for ja in sentences], [request_for(a) for a in adapters]
    start = time.perf_counter()
    llm.chat(messages, params, lora_request=requests, use_tqdm=False)
    return time.perf_counter() - start


def mixing_cost(llm: Any, sentences: list[str], max_tokens: int = 32, rounds: int = 2) -> pd.DataFrame:
    """Output tokens/s of the same requests served four ways, measured side by side (best of `rounds`).

    - base: no adapter at all;
    - one adapter: every request with `english`, one batch;
    - mixed batch: half `english`, half `glossary`, one batch (multi-LoRA);
    - one adapter at a time: the english half, then the glossary half, two batches (what a server
      with one adapter per engine would have to do).

    Returns:
        One row per way: seconds, output tokens/s, and tokens/s relative to "one adapter".
    """
    n, half = len(sentences), len(sentences) // 2
    ways = {
        "base": [(sentences, [None] * n)],
        "one adapter": [(sentences, ["english"] * n)],
        "mixed batch": [(sentences, ["english", "glossary"] * half + ["english"] * (n % 2))],
        "one adapter at a time": [(sentences[:half], ["english"] * half), (sentences[half:], ["glossary"] * (n - half))],
    }
    _timed_chat(llm, sentences[:2], ["english", "glossary"], 2)  # load both adapters into slots first
    best = {way: float("inf") for way in ways}
    for _ in range(rounds):  # interleaved, so a busy moment of the machine hits every way alike
        for way, calls in ways.items():
            best[way] = min(best[way], sum(_timed_chat(llm, s, a, max_tokens) for s, a in calls))
    rows = [{"way": way, "seconds": best[way], "output tok/s": n * max_tokens / best[way]} for way in ways]
    table = pd.DataFrame(rows).set_index("way")
    table["vs one adapter"] = table["output tok/s"] / table.loc["one adapter", "output tok/s"]
    return table.round(4)


def slowdown_of_mixing(table: pd.DataFrame) -> float:
    """Seconds of the mixed batch / seconds of the one-adapter batch (> 1: mixing is slower)."""
    return float(table.loc["mixed batch", "seconds"] / table.loc["one adapter", "seconds"])


def lora_server_args(max_loras: int = MAX_LORAS, max_lora_rank: int = MAX_LORA_RANK) -> tuple[str, ...]:
    """vLLM server flags that serve both adapters beside the base model: a request picks one by `model`.

    `--lora-modules name=path` registers each adapter under its name, which /v1/models lists next to
    the base model's served name; `model="english"` in a request then means the base model + english.
    """
    modules = [f"{name}={adapter_dir(name)}" for name in ADAPTER_NAMES]
    return ("--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank),
            "--lora-modules", *modules)


def adapter_summary() -> pd.DataFrame:
    """Each adapter's recipe as vLLM will read it: rank, alpha, rsLoRA, modules, and its folder."""
    rows = [{"adapter": name, "r": r.rank, "lora_alpha": r.alpha, "use_rslora": r.use_rslora,
             "target_modules": ", ".join(r.target_modules), "examples": len(adapter_pairs(name)),
             "folder": str(adapter_dir(name))} for name, r in RECIPES.items()]
    return pd.DataFrame(rows).set_index("adapter")


def ask_server(base_url: str, model: str, sentences: list[str], api_key: str | None = None) -> list[str]:
    """Greedy answers from an OpenAI-compatible server; `model` picks the adapter ("english") or the base model.

    Each request names its adapter in `model`: the server turns that name into the LoRARequest that
    `--lora-modules` registered, so requests for different adapters share the engine's batches.
    """
    from labs.core.client import make_client

    client = make_client(base_url, api_key)
    answers = []
    for ja in sentences:
        reply = client.chat.completions.create(model=model, messages=translation_messages(ja), max_tokens=48,
                                               temperature=0.0)
        answers.append(reply.choices[0].message.content)
    return answers
