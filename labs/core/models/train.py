"""Train tiny-phrasebook on the CPU: phase 1 memorises the phrasebook, phase 2 the capstone's format.

Nothing here runs during `make setup`: the trained weights are shipped (labs/core/models/shipped/).
`python -m labs.core.models train` runs this to reproduce or change them; each phase shows a progress
bar with its own time estimate, and the result can replace the shipped files (`--ship`).
"""

from __future__ import annotations

import random
import time
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

from labs.core.models import capstone_format
from labs.core.models.phrasebook import load_phrasebook, translation_messages
from labs.core.models.recipe import CapstoneTrainConfig, TrainConfig
from labs.core.models.prompt_format import PromptTemplate

def encode_example(tok: PreTrainedTokenizerFast, ja: str, zh: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the translation prompt for `ja`, and of the expected answer (zh + <|im_end|>).

    Args:
        tok: the workbook's tokenizer (its chat template renders the prompt).
        ja: the Japanese sentence.
        zh: its Chinese translation; None for a prompt alone.

    Returns:
        (prompt ids ending with the assistant's turn, answer ids or [] when `zh` is None).
    """
    prompt_ids = tok.apply_chat_template(translation_messages(ja), add_generation_prompt=True, return_dict=False)
    answer_ids = tok(zh, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] if zh is not None else []
    return list(prompt_ids), answer_ids


@torch.inference_mode()
def greedy_translate(model: Qwen2ForCausalLM, tok: PreTrainedTokenizerFast, ja_list: list[str],
                     max_new_tokens: int = 48, batch_size: int = 64) -> list[str]:
    """Greedy translations with HF `generate` (left-padded batches), the reference vLLM is checked against.

    Args:
        model: the model, in eval mode.
        tok: its tokenizer.
        ja_list: Japanese sentences, sent in Lab 1's format.
        max_new_tokens: the longest answer.
        batch_size: prompts per `generate` call.

    Returns:
        One decoded answer per sentence, special tokens dropped.
    """
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
    """The share of phrasebook sentences that greedy decoding translates exactly (Lab 1's format).

    Args:
        model: the model, in eval mode.
        tok: its tokenizer.

    Returns:
        A fraction in [0, 1].
    """
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


def train_phrasebook(model: Qwen2ForCausalLM, tok: PreTrainedTokenizerFast, cfg: TrainConfig) -> dict:
    """Phase 1: epochs over the phrasebook in Lab 1's format until greedy decoding reproduces it.

    Returns:
        What build_info.json records: epochs run, seconds, the last measured accuracy.
    """
    examples = [encode_example(tok, e.ja, e.zh) for e in load_phrasebook()]
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0, betas=(0.9, 0.98))
    steps_per_epoch = -(-len(examples) // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.max_epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * max(0.1, 1 - s / total_steps))
    start, accuracy, epoch, mean_loss = time.monotonic(), 0.0, 0, float("nan")
    bar = tqdm(range(1, cfg.max_epochs + 1), desc="phase 1 (phrasebook)", unit="epoch")
    for epoch in bar:
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
        mean_loss = epoch_loss / steps_per_epoch
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        if (epoch >= cfg.first_eval_epoch and epoch % cfg.eval_every_epochs == 0) or epoch == cfg.max_epochs:
            model.eval()
            accuracy = phrasebook_accuracy(model, tok)
            bar.write(f"  epoch {epoch:3d}  loss {epoch_loss / steps_per_epoch:.4f}  "
                      f"phrasebook exact {accuracy:.1%}  ({time.monotonic() - start:.0f}s)")
            if accuracy >= cfg.stop_accuracy:
                break
    bar.close()
    return {"epochs": epoch, "train_seconds": round(time.monotonic() - start, 1), "phrasebook_accuracy": accuracy,
            "final_loss": round(mean_loss, 4)}


def train_capstone(model: Qwen2ForCausalLM, tok: PreTrainedTokenizerFast, cfg: CapstoneTrainConfig) -> dict:
    """Phase 2: the capstone format (see labs/core/models/capstone_format.py), plain batches in between.

    Returns:
        What build_info.json records: seconds, the last held-out accuracy.
    """
    entries, template = load_phrasebook(), PromptTemplate.load()
    rng, held_out = random.Random(0), capstone_format.held_out_requests(cfg.paragraph_counts, cfg.num_eval_requests)
    plain = [encode_example(tok, e.ja, e.zh) for e in entries]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * max(0.1, 1 - s / cfg.steps))
    start, accuracy, total, order, cursor = time.monotonic(), 0.0, 0.0, list(range(len(plain))), len(plain)
    last_loss = float("nan")
    bar = tqdm(range(1, cfg.steps + 1), desc="phase 2 (capstone format)", unit="step")
    for step in bar:
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
        last_loss = _optimizer_step(model, opt, sched, loss)
        total += last_loss
        if step % cfg.eval_every_steps == 0 or step == cfg.steps:
            accuracy = capstone_format.capstone_accuracy(model, tok, held_out)
            bar.write(f"  capstone step {step:4d}  loss {total / cfg.eval_every_steps:.4f}  "
                      f"held-out chunks exact {accuracy:.1%}  ({time.monotonic() - start:.0f}s)")
            total = 0.0
    bar.close()
    return {"train_seconds": round(time.monotonic() - start, 1), "held_out_accuracy": accuracy,
            "final_loss": round(last_loss, 4)}
