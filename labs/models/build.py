"""Build the workbook's offline models: `tiny-random` and `tiny-phrasebook`.

Both are Qwen2-architecture models, so vLLM runs them with its real Qwen2 implementation and
whatever a lab shows about them transfers to real Qwen models. `tiny-phrasebook` is trained on
the CPU until greedy decoding reproduces the phrasebook, so labs show text that means something
and later labs can check exact outputs.

Builds are cached: each model folder holds `build_info.json` with a key over the data, the
config and this file's build version; a matching key means there is nothing to do.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

import labs.translate.prompt as prompt_module
from labs.models import capstone_format
from labs.models.phrasebook import DATA_DIR, load_phrasebook, translation_messages
from labs.translate.prompt import DATA_DIR as TRANSLATE_DATA_DIR, PromptTemplate
from labs.models.resolve import WORKBOOK_MODELS_DIR
from labs.models.tokenizer import train_tokenizer

BUILD_VERSION = 3  # bump when the build's behaviour changes, so cached models are rebuilt
MIN_PHRASEBOOK_ACCURACY = 0.95
MIN_CAPSTONE_ACCURACY = 0.95  # phrasebook sentences sent in the capstone's format, answered exactly


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of both tiny models, each value chosen for vLLM's CPU backend and a 2-core budget."""

    hidden_size: int = 256  # 4 heads x head_dim 64: vLLM's CPU attention rejects head_dim 16
    num_attention_heads: int = 4
    num_key_value_heads: int = 2  # grouped-query attention, as in real Qwen2: 2 query heads per KV head
    num_hidden_layers: int = 4  # enough capacity to memorise ~320 pairs within the time budget
    intermediate_size: int = 768  # 3x hidden, SwiGLU MLP
    max_position_embeddings: int = 2048  # room for the capstone's multi-sentence chunks
    rope_theta: float = 10000.0
    seed: int = 0  # weights (random or trained) are a function of this seed and the data


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe for tiny-phrasebook: memorisation, so large steps and many epochs."""

    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    max_epochs: int = 100  # a cap; training stops at the first evaluation that meets the target
    first_eval_epoch: int = 40  # evaluating costs ~2 s; before epoch ~40 the model is not there yet
    eval_every_epochs: int = 10
    stop_accuracy: float = 0.995  # stop once (nearly) every pair is reproduced exactly
    # No wall-clock cut-off on purpose: a time limit would make the weights depend on machine load.
    # ~70 epochs take ~2.5 minutes on 2 cores (budget: 5); the build log prints the time.
    num_threads: int = 2  # fixed, so the float reductions (and the weights) do not vary with core count


@dataclass(frozen=True)
class CapstoneTrainConfig:
    """Phase 2 of tiny-phrasebook: the capstone's prompt format (labs/models/capstone_format.py).

    Fine-tuning after phase 1 (not mixing from the start) keeps phase 1, and so the Lab 1 model,
    exactly as before up to that point; plain-format batches in between keep it there.
    """

    steps: int = 1500  # capstone + plain batches, ~0.3 s each on 2 idle cores (~8 min); 800 gave 97.8% on all 320
    learning_rate: float = 1e-3  # peak, after warmup, decaying linearly to 10%: lower than phase 1's (3e-3),
    warmup_steps: int = 50  # the phrasebook is already memorised and a large first step would shake it
    batch_size: int = 32
    plain_every: int = 3  # every 3rd step is a plain-format batch, so Lab 1's format is not forgotten
    # One paragraph per chunk (after 0-2 paragraphs of context). Chunks of 2-3 numbered paragraphs
    # were tried: after 400 steps the model still mixed up which [n] it was on (a 4-layer model
    # learns that lookup slowly), so the pipeline is told to send this model one paragraph at a time.
    paragraph_counts: tuple[int, ...] = (1,)
    max_chunk_paragraphs: int = 1  # recorded in build_info.json; the pipeline's "auto" chunking reads it
    eval_every_steps: int = 500  # progress in the build log; an evaluation costs ~20 s
    num_eval_requests: int = 64
    # No early stop: stopping at the first perfect score on 64 held-out requests (step 900) left
    # 98.1% of the phrasebook right in this format, and the misses were sentences that ran on
    # after their translation; the full schedule decays the learning rate and settles them.


def _data_fingerprint() -> str:
    """Over everything the training reads: the phrasebook and corpora, and the capstone's prompt
    (its code and default files), so a changed preface retrains the model that must follow it."""
    h = hashlib.sha256()
    for path in [*sorted(DATA_DIR.iterdir()), *sorted(TRANSLATE_DATA_DIR.iterdir()), Path(prompt_module.__file__)]:
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def _build_key(name: str, model_cfg: TinyModelConfig, train_cfg: TrainConfig | None,
               capstone_cfg: CapstoneTrainConfig | None) -> str:
    payload = {
        "name": name, "version": BUILD_VERSION, "data": _data_fingerprint(),
        "model": asdict(model_cfg), "train": asdict(train_cfg) if train_cfg else None,
        "capstone": asdict(capstone_cfg) if capstone_cfg else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _is_built(out_dir: Path, key: str) -> bool:
    info = out_dir / "build_info.json"
    return info.is_file() and json.loads(info.read_text()).get("key") == key


def _qwen2_config(cfg: TinyModelConfig, tok: PreTrainedTokenizerFast) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
        torch_dtype="bfloat16",
    )


def _save(model: Qwen2ForCausalLM, tok: PreTrainedTokenizerFast, out_dir: Path, info: dict) -> None:
    """Write atomically: a half-written model folder must never look like a finished build."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.do_sample = False
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "build_info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def encode_example(tok: PreTrainedTokenizerFast, ja: str, zh: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the translation prompt for `ja`, and of the expected answer (zh + <|im_end|>)."""
    prompt_ids = tok.apply_chat_template(translation_messages(ja), add_generation_prompt=True, return_dict=False)
    answer_ids = tok(zh, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] if zh is not None else []
    return list(prompt_ids), answer_ids


@torch.inference_mode()
def greedy_translate(model: Qwen2ForCausalLM, tok: PreTrainedTokenizerFast, ja_list: list[str],
                     max_new_tokens: int = 48, batch_size: int = 64) -> list[str]:
    """Greedy translations with HF `generate` (left-padded batches), the reference vLLM is checked against."""
    outputs: list[str] = []
    for start in range(0, len(ja_list), batch_size):
        prompts = [encode_example(tok, ja)[0] for ja in ja_list[start:start + batch_size]]
        # left padding: every prompt then ends where generation starts
        batch = tok.pad({"input_ids": prompts}, return_tensors="pt", padding_side="left")
        generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        new_ids = generated[:, batch["input_ids"].shape[1]:]
        outputs.extend(tok.batch_decode(new_ids, skip_special_tokens=True))
    return outputs


def phrasebook_accuracy(model: Qwen2ForCausalLM, tok: PreTrainedTokenizerFast) -> float:
    entries = load_phrasebook()
    got = greedy_translate(model, tok, [e.ja for e in entries])
    return sum(g == e.zh for g, e in zip(got, entries)) / len(entries)


def _optimizer_step(model: Qwen2ForCausalLM, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                    loss: torch.Tensor) -> float:
    """One update with gradient clipping (both phases); returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss.item()


def _train(model: Qwen2ForCausalLM, tok: PreTrainedTokenizerFast, cfg: TrainConfig, log) -> dict:
    entries = load_phrasebook()
    examples = [encode_example(tok, e.ja, e.zh) for e in entries]
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0, betas=(0.9, 0.98))
    steps_per_epoch = -(-len(examples) // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.max_epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * max(0.1, 1 - s / total_steps))
    start, accuracy, epoch = time.monotonic(), 0.0, 0
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        order = torch.randperm(len(examples), generator=gen).tolist()
        epoch_loss = 0.0
        for b in range(0, len(order), cfg.batch_size):
            batch = [examples[i] for i in order[b:b + cfg.batch_size]]
            seq_len = max(len(p) + len(a) for p, a in batch)
            input_ids = torch.full((len(batch), seq_len), tok.pad_token_id)  # (batch, seq_len)
            labels = torch.full((len(batch), seq_len), -100)
            for row, (p, a) in enumerate(batch):
                ids = p + a
                input_ids[row, :len(ids)] = torch.tensor(ids)
                # position t predicts token t+1: supervise only the answer tokens
                labels[row, len(p) - 1:len(ids) - 1] = torch.tensor(a)
            hidden = model.model(input_ids=input_ids).last_hidden_state  # (batch, seq_len, hidden)
            mask = labels != -100
            logits = model.lm_head(hidden[mask])  # (num_answer_tokens, vocab): skip the prompt's logits
            loss = torch.nn.functional.cross_entropy(logits, labels[mask])
            epoch_loss += _optimizer_step(model, opt, sched, loss)
        elapsed = time.monotonic() - start
        if (epoch >= cfg.first_eval_epoch and epoch % cfg.eval_every_epochs == 0) or epoch == cfg.max_epochs:
            model.eval()
            accuracy = phrasebook_accuracy(model, tok)
            log(f"  epoch {epoch:3d}  loss {epoch_loss / steps_per_epoch:.4f}  "
                f"phrasebook exact {accuracy:.1%}  ({elapsed:.0f}s)")
            if accuracy >= cfg.stop_accuracy:
                break
    return {"epochs": epoch, "train_seconds": round(time.monotonic() - start, 1), "phrasebook_accuracy": accuracy}


def _train_capstone(model: Qwen2ForCausalLM, tok: PreTrainedTokenizerFast, cfg: CapstoneTrainConfig, log) -> dict:
    """Phase 2: the capstone format (see labs/models/capstone_format.py); returns what to record."""
    import random

    entries, template = load_phrasebook(), PromptTemplate.load()
    rng, held_out = random.Random(0), capstone_format.held_out_requests(cfg.paragraph_counts, cfg.num_eval_requests)
    plain = [encode_example(tok, e.ja, e.zh) for e in entries]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * max(0.1, 1 - s / cfg.steps))
    start, accuracy, total, order, cursor = time.monotonic(), 0.0, 0.0, list(range(len(plain))), len(plain)
    for step in range(1, cfg.steps + 1):
        model.train()
        if step % cfg.plain_every == 0:
            if cursor + cfg.batch_size > len(order):
                rng.shuffle(order)
                cursor = 0
            loss = capstone_format.answer_loss(model, tok.pad_token_id, [],
                                               [plain[i] for i in order[cursor:cursor + cfg.batch_size]])
            cursor += cfg.batch_size
        else:
            prefix, examples = capstone_format.capstone_batch(rng, tok, entries, template, cfg.batch_size,
                                                              cfg.paragraph_counts)
            loss = capstone_format.answer_loss(model, tok.pad_token_id, prefix, [(e.suffix, e.answer) for e in examples])
        total += _optimizer_step(model, opt, sched, loss)
        if step % cfg.eval_every_steps == 0 or step == cfg.steps:
            accuracy = capstone_format.capstone_accuracy(model, tok, held_out)
            log(f"  capstone step {step:4d}  loss {total / cfg.eval_every_steps:.4f}  "
                f"held-out chunks exact {accuracy:.1%}  ({time.monotonic() - start:.0f}s)")
            total = 0.0
    return {"train_seconds": round(time.monotonic() - start, 1), "held_out_accuracy": accuracy}


def build_model(name: str, out_root: Path = WORKBOOK_MODELS_DIR, force: bool = False, log=print) -> Path:
    """Build `tiny-random` or `tiny-phrasebook` into `out_root/name` unless an identical build exists.

    Returns:
        The model folder.

    Raises:
        RuntimeError: tiny-phrasebook did not reach the accuracy target.
    """
    if name not in ("tiny-random", "tiny-phrasebook"):
        raise ValueError(f"unknown model {name!r}; choose tiny-random or tiny-phrasebook")
    trained = name == "tiny-phrasebook"
    model_cfg, train_cfg = TinyModelConfig(), TrainConfig() if trained else None
    capstone_cfg = CapstoneTrainConfig() if trained else None
    out_dir = out_root / name
    key = _build_key(name, model_cfg, train_cfg, capstone_cfg)
    if not force and _is_built(out_dir, key):
        log(f"{name}: up to date in {out_dir}")
        return out_dir
    log(f"{name}: building into {out_dir}")
    torch.set_num_threads(TrainConfig.num_threads)
    torch.manual_seed(model_cfg.seed)
    tok = train_tokenizer(out_root / "tokenizer")
    model = Qwen2ForCausalLM(_qwen2_config(model_cfg, tok)).float()
    info: dict = {"key": key, "name": name, "model": asdict(model_cfg)}
    if train_cfg is not None:
        info["train"] = asdict(train_cfg) | _train(model, tok, train_cfg, log)
    if capstone_cfg is not None:
        log("  phase 2: the capstone's prompt format")
        info["capstone"] = asdict(capstone_cfg) | _train_capstone(model, tok, capstone_cfg, log)
    # Saved in bfloat16, the dtype vLLM's CPU and GPU backends run it in, so both engines (and HF,
    # which upcasts losslessly to float32) read the very same weights. Accuracy is measured after.
    model = model.to(torch.bfloat16).float()
    if train_cfg is not None:
        info["train"]["phrasebook_accuracy"] = accuracy = phrasebook_accuracy(model.eval(), tok)
        log(f"  phrasebook exact after rounding to bfloat16: {accuracy:.1%}")
        if accuracy < MIN_PHRASEBOOK_ACCURACY:
            raise RuntimeError(
                f"tiny-phrasebook reached only {accuracy:.1%} exact phrasebook translations "
                f"(target {MIN_PHRASEBOOK_ACCURACY:.0%}); the model was not saved.")
    if capstone_cfg is not None:
        every_entry = capstone_format.held_out_requests(capstone_cfg.paragraph_counts)
        info["capstone"]["phrasebook_accuracy"] = accuracy = capstone_format.capstone_accuracy(model, tok, every_entry)
        log(f"  phrasebook exact in the capstone's format after rounding to bfloat16: {accuracy:.1%}")
        if accuracy < MIN_CAPSTONE_ACCURACY:
            raise RuntimeError(
                f"tiny-phrasebook translated only {accuracy:.1%} of the phrasebook exactly in the capstone's "
                f"prompt format (target {MIN_CAPSTONE_ACCURACY:.0%}); the model was not saved.")
    model = model.to(torch.bfloat16)
    _save(model, tok, out_dir, info)
    log(f"{name}: done ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    return out_dir
