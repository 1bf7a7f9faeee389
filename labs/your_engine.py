"""Your engine against vLLM: the mini engine built from your answers, token for token, on all 320 prompts.

    python -m labs.your_engine                         # your parts whose graders pass, else the reference
    python -m labs.your_engine --parts lab2_kv_cache   # these parts yours, no grading (all / none too)
    python -m labs.your_engine --parts lab2_kv_cache=my.module   # a part from any module

The mini engine (labs/core/mini) takes its KV cache manager (Lab 2), paged attention (Lab 2) and
scheduler (Lab 3) from the grading switch ($LABS_ENGINE, labs.core.grading.engine_part). A part
is yours only if that exercise's graded tests (tests/exercises/...) pass with LABS_GRADE=learner:
a half-done part would only make the comparison fail for a reason the graders already name.

Every phrasebook prompt, chat-rendered as the labs do, is generated greedily (max_tokens=48) by
the mini engine in three settings and by real vLLM (tiny-phrasebook), and the output tokens are
compared one by one:
    default            plenty of KV blocks, prefix caching off: plain continuous batching
    scarce-kv-blocks   12 KV blocks for up to 8 requests: requests are preempted and recomputed
    prefix-caching     prefix caching on, every prompt sent twice: the second finds the first's blocks
Each prints "320/320 equal" or the first prompt (index and text) and output position where the
two part, with both tokens, and which of your parts were in play. vLLM's outputs are kept in
runs/your_engine/ (keyed by vLLM's version, the model's files, the prompts and max_tokens), so
only the first run starts vLLM; --fresh recomputes them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labs.core.grading import ENGINE_ENV, ENGINE_PARTS, format_engine_setting, implementation_module_name, \
    parse_engine_setting
from labs.core.paths import REPO_ROOT, RUNS_DIR
from labs.progress import ENGINE_PART_TESTS, classify, run_graders

MODEL = "tiny-phrasebook"
MAX_TOKENS = 48
CACHE_DIR = RUNS_DIR / "your_engine"  # git-ignored

PART_TESTS = ENGINE_PART_TESTS  # each engine part and the graded tests that decide whether yours is used
LAB_PARTS: dict[int, tuple[str, ...]] = {2: ("lab2_kv_cache", "lab2_paged_attention"), 3: ("lab3_scheduler",)}


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
)}


# --- which parts are yours ------------------------------------------------------------------------

@dataclass
class Parts:
    """The engine's parts: each one's choice for the switch and why it was chosen."""

    choices: dict[str, str]
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def yours(self) -> list[str]:
        return [p for p in ENGINE_PARTS if self.choices.get(p, "solution") != "solution"]

    @property
    def engine_setting(self) -> str:
        return format_engine_setting(self.choices)

    def describe(self) -> str:
        lines = []
        for part in ENGINE_PARTS:
            choice = self.choices.get(part, "solution")
            module = implementation_module_name(part, choice)
            who = "reference" if choice == "solution" else "YOURS" if choice == "learner" else "module"
            reason = self.reasons.get(part, "")
            lines.append(f"  {part:<21} {who:<9} {module}{f'  ({reason})' if reason else ''}")
        return "\n".join(lines)

    def in_play(self) -> str:
        return ", ".join(f"{p}" + ("" if self.choices[p] == "learner" else f"={self.choices[p]}")
                         for p in self.yours) or "none (all reference)"


def parse_parts(spec: str) -> Parts:
    """--parts: "all" (every part yours), "none", or "lab2_kv_cache,lab3_scheduler=some.module"."""
    spec = spec.strip()
    if spec in ("all", "learner"):
        return Parts(dict.fromkeys(ENGINE_PARTS, "learner"), dict.fromkeys(ENGINE_PARTS, "--parts all"))
    if spec in ("none", "solution", ""):
        return Parts(dict.fromkeys(ENGINE_PARTS, "solution"))
    items = [i.strip() for i in spec.split(",") if i.strip()]
    choices = parse_engine_setting(",".join(i if "=" in i else f"{i}=learner" for i in items))
    return Parts(choices, {p: "chosen with --parts" for p, c in choices.items() if c != "solution"})


def grade_parts(grade: str = "learner", known_passed: tuple[str, ...] = (), show_progress: bool = True) -> Parts:
    """Run the graders of the engine's parts (LABS_GRADE=`grade`); the passing ones are used.

    Args:
        grade: whose answers ("learner", or a module path / "solution" to check the mechanism).
        known_passed: parts already known to pass (e.g. `make grade` just graded them): not rerun.
    """
    to_grade = [p for p in ENGINE_PARTS if p not in known_passed]
    run = run_graders([REPO_ROOT / PART_TESTS[p] for p in to_grade], grade, desc="grading your engine's parts",
                      show_progress=show_progress) if to_grade else None
    parts = _parts_from(run, grade, to_grade)
    for part in known_passed:
        parts.choices[part], parts.reasons[part] = grade, "its graders pass"
    return parts


def _parts_from(run: Any, grade: str, graded: list[str]) -> Parts:
    parts = Parts(dict.fromkeys(ENGINE_PARTS, "solution"))
    for part in graded:
        status = classify(run.of_file(PART_TESTS[part]))
        if status.passed:
            parts.choices[part], parts.reasons[part] = grade, f"{PART_TESTS[part]} passes"
        else:
            parts.reasons[part] = f"yours: {status.label}, {PART_TESTS[part]}"
    return parts


@contextmanager
def engine_parts(parts: Parts) -> Iterator[None]:
    """$LABS_ENGINE set to `parts` while the mini engine is built and runs (it reads it every step)."""
    before = os.environ.get(ENGINE_ENV)
    os.environ[ENGINE_ENV] = parts.engine_setting
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENGINE_ENV, None)
        else:
            os.environ[ENGINE_ENV] = before


# --- prompts and vLLM's outputs -------------------------------------------------------------------

@dataclass
class Reference:
    """vLLM's greedy outputs on the phrasebook prompts."""

    prompts_ja: list[str]
    prompt_token_ids: list[list[int]]
    output_token_ids: list[list[int]]


def phrasebook_messages() -> tuple[list[str], list[list[dict[str, str]]]]:
    from labs.core.models.phrasebook import load_phrasebook, translation_messages

    entries = load_phrasebook()
    return [e.ja for e in entries], [translation_messages(e.ja) for e in entries]


def reference_from_vllm(llm: Any, max_tokens: int = MAX_TOKENS, num_prompts: int | None = None) -> Reference:
    """vLLM's own outputs, generated by `llm` (a `vllm.LLM` on tiny-phrasebook) from the chat messages."""
    from vllm import SamplingParams as VllmSamplingParams

    ja, messages = phrasebook_messages()
    ja, messages = ja[:num_prompts], messages[:num_prompts]
    outputs = llm.chat(messages, VllmSamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False)
    return Reference(ja, [list(o.prompt_token_ids) for o in outputs], [list(o.outputs[0].token_ids) for o in outputs])


def _cache_key(max_tokens: int, num_prompts: int) -> str:
    import vllm

    from labs.core.models import resolve_model

    model_dir = Path(resolve_model(MODEL).path)
    files = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in model_dir.iterdir() if p.is_file())
    ja, messages = phrasebook_messages()
    blob = json.dumps([vllm.__version__, str(model_dir), files, messages[:num_prompts], max_tokens])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def vllm_reference(max_tokens: int = MAX_TOKENS, num_prompts: int = 320, fresh: bool = False) -> Reference:
    """vLLM's outputs: from runs/your_engine/ when this very run was made before, else by starting vLLM.

    vLLM runs in a subprocess of its own: once it has run in a process, its CPU thread binding
    slows every later torch op there (the mini engine ~10x).
    """
    path = CACHE_DIR / f"vllm-{_cache_key(max_tokens, num_prompts)}.json"
    if path.is_file() and not fresh:
        return Reference(**json.loads(path.read_text()))
    print(f"Starting vLLM on {MODEL} for its outputs (~30 s, once: kept in {path.relative_to(REPO_ROOT)}) ...",
          flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    code = (f"from labs.your_engine import _write_vllm_reference; "
            f"_write_vllm_reference({max_tokens}, {num_prompts}, {str(path)!r})")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"vLLM failed to give its outputs:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return Reference(**json.loads(path.read_text()))


def _write_vllm_reference(max_tokens: int, num_prompts: int, path: str) -> None:
    from labs.core.engine import free_llm, make_llm

    llm = make_llm(MODEL, verbose=False)
    try:
        reference = reference_from_vllm(llm, max_tokens, num_prompts)
    finally:
        free_llm(llm)
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(reference.__dict__))
    tmp.replace(path)


def load_reference(path: str | Path) -> Reference:
    return Reference(**json.loads(Path(path).read_text()))


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


def _generate(llm: Any, prompt_ids: list[list[int]], max_tokens: int) -> tuple[list[list[int]], list[int]]:
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
                outputs, cached = _generate(llm, prompt_ids, max_tokens)
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
    expected, _ = _generate(ref_llm, prompt_ids, MAX_TOKENS)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.your_engine", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=None,
                        help="which parts are yours, without grading: all, none, or e.g. "
                             "lab2_kv_cache,lab3_scheduler (part=module.path for any module); default: the parts "
                             "whose graders pass ($LABS_ENGINE, if set, is used as is)")
    parser.add_argument("--passed", default="",
                        help="parts known to pass their graders (not graded again), e.g. after make grade")
    parser.add_argument("--after-lab", type=int, default=None,
                        help="called by `make grade LAB=N` once lab N passes: its parts count as passed")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"among {', '.join(SETTINGS)}")
    parser.add_argument("--num-prompts", type=int, default=320, help="the first N phrasebook prompts (default all)")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    parser.add_argument("--fresh", action="store_true", help="recompute vLLM's outputs (not the kept ones)")
    parser.add_argument("--smoke", action="store_true",
                        help="make progress's check: a few prompts, against the reference mini engine (no vLLM)")
    parser.add_argument("--reference-file", default=None, help=argparse.SUPPRESS)  # tests: vLLM's outputs as JSON
    args = parser.parse_args(argv)

    if args.after_lab is not None and args.after_lab not in LAB_PARTS:
        print(f"Lab {args.after_lab} has no part in the mini engine (its parts: Lab 2's KV cache manager and "
              "paged attention, Lab 3's scheduler), so there is no engine comparison for it.")
        return 0
    if args.parts is not None:
        parts = parse_parts(args.parts)
    elif os.environ.get(ENGINE_ENV):
        choices = parse_engine_setting(os.environ[ENGINE_ENV])
        parts = Parts(choices, {p: f"${ENGINE_ENV}" for p, c in choices.items() if c != "solution"})
    else:
        known = tuple(p for p in args.passed.split(",") if p.strip())
        known += LAB_PARTS.get(args.after_lab, ())
        parts = grade_parts("learner", known)
    if args.smoke:
        print(smoke(parts))
        return 0
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")

    if args.reference_file:
        reference = load_reference(args.reference_file)
    else:
        reference = vllm_reference(args.max_tokens, args.num_prompts, args.fresh)
    n = len(reference.output_token_ids)
    print(f"\nYour engine vs vLLM: {MODEL}, {n} phrasebook prompts, greedy, max_tokens={args.max_tokens}")
    print(f"Parts ({ENGINE_ENV}={parts.engine_setting}):\n{parts.describe()}\n")
    results = compare(parts, reference, settings, args.max_tokens)
    ok = all(r.ok for r in results)
    print(f"\n{'All equal' if ok else 'NOT all equal'}: your parts in play: {parts.in_play()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
