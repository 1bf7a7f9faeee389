"""Train a LoRA adapter for tiny-phrasebook by hand in torch, and write it in the PEFT format vLLM loads.

Why by hand (no `peft`): the whole method is a dozen lines, and seeing them is the point of Lab 9.
Each chosen projection W (out x in) of the frozen base model gets two trainable matrices,
A (r x in, random) and B (out x r, zero), and computes y = x W^T + scaling * (x A^T) B^T, with
scaling = alpha / r (alpha / sqrt(r) with rsLoRA). B = 0 makes step 0 the base model exactly.

Nothing here runs in CI or `make setup`: the adapters are shipped (labs/core/models/adapters.py).
`python -m labs.core.models train-adapters` reproduces them.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from labs.core.models.adapters import RECIPES, LoraRecipe, adapter_key, adapter_pairs, shipped_adapter_dir
from labs.core.models.recipe import phrasebook_key
from labs.core.models.resolve import WORKBOOK_MODELS_DIR


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update, PEFT's names (`lora_A`, `lora_B`)."""

    def __init__(self, base: nn.Linear, rank: int, scaling: float, generator: torch.Generator) -> None:
        super().__init__()
        self.base, self.scaling = base, scaling
        # PEFT's default init: A ~ kaiming-uniform(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)); B = 0.
        bound = 1 / math.sqrt(base.in_features)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features).uniform_(-bound, bound, generator=generator))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in) -> (..., out)
        return self.base(x) + (x @ self.lora_A.T) @ self.lora_B.T * self.scaling


def lora_scaling(recipe: LoraRecipe) -> float:
    """alpha / r, or alpha / sqrt(r) with rsLoRA: the rule vLLM's PEFTHelper applies to adapter_config.json."""
    return recipe.alpha / (math.sqrt(recipe.rank) if recipe.use_rslora else recipe.rank)


def add_lora(model: nn.Module, recipe: LoraRecipe) -> dict[str, LoRALinear]:
    """Freeze `model` and wrap every `recipe.target_modules` projection in a LoRALinear (in place).

    Returns:
        The wrapped modules by their name in the model ("model.layers.0.self_attn.q_proj"), in module order.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(recipe.seed)
    wrapped: dict[str, LoRALinear] = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in recipe.target_modules:
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            wrapped[name] = LoRALinear(module, recipe.rank, lora_scaling(recipe), gen)
            setattr(parent, name.rsplit(".", 1)[-1], wrapped[name])
    return wrapped


def train_adapter(model: nn.Module, tok, recipe: LoraRecipe, log=print) -> tuple[dict[str, LoRALinear], dict]:
    """Add LoRA to `model` and train only A/B on the adapter's pairs; returns the modules and the record."""
    from labs.core.models.capstone_format import answer_loss
    from labs.core.models.train import encode_example

    torch.manual_seed(recipe.seed)
    wrapped = add_lora(model, recipe)
    params = [p for m in wrapped.values() for p in (m.lora_A, m.lora_B)]
    examples = [encode_example(tok, ja, answer) for ja, answer in adapter_pairs(recipe.name)]
    opt = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / recipe.warmup_steps) * max(0.1, 1 - s / recipe.steps))
    gen = torch.Generator().manual_seed(recipe.seed)
    order: list[int] = []
    start, loss_value = time.monotonic(), float("nan")
    model.train()
    for step in range(1, recipe.steps + 1):
        if len(order) < recipe.batch_size:
            order += torch.randperm(len(examples), generator=gen).tolist()
        batch, order = [examples[i] for i in order[:recipe.batch_size]], order[recipe.batch_size:]
        loss = answer_loss(model, tok.pad_token_id, [], batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        loss_value = loss.item()
        if step % 25 == 0 or step == recipe.steps:
            log(f"  {recipe.name} step {step:4d}  loss {loss_value:.4f}  ({time.monotonic() - start:.0f}s)")
    model.eval()
    return wrapped, {"train_seconds": round(time.monotonic() - start, 1), "final_loss": round(loss_value, 4),
                     "num_examples": len(examples)}


def peft_state_dict(wrapped: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    """PEFT's tensor names: base_model.model.<module>.lora_A.weight (r x in) and .lora_B.weight (out x r), bf16."""
    state = {}
    for name, m in wrapped.items():
        state[f"base_model.model.{name}.lora_A.weight"] = m.lora_A.detach().to(torch.bfloat16).contiguous()
        state[f"base_model.model.{name}.lora_B.weight"] = m.lora_B.detach().to(torch.bfloat16).contiguous()
    return state


def adapter_config(recipe: LoraRecipe) -> dict:
    """adapter_config.json as PEFT writes it (the fields vLLM's PEFTHelper reads, and PEFT's defaults)."""
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "tiny-phrasebook",
            "r": recipe.rank, "lora_alpha": recipe.alpha, "use_rslora": recipe.use_rslora,
            "target_modules": sorted(recipe.target_modules), "lora_dropout": 0.0, "bias": "none",
            "fan_in_fan_out": False, "modules_to_save": None, "init_lora_weights": True, "use_dora": False}


def exact_share(model: nn.Module, tok, pairs: list[tuple[str, str]]) -> float:
    """Share of `pairs` whose greedy answer equals the expected one exactly."""
    from labs.core.models.train import greedy_translate

    got = greedy_translate(model, tok, [ja for ja, _ in pairs])
    return sum(g == want for g, (_, want) in zip(got, pairs)) / len(pairs)


def train_adapter_files(name: str, out_root: Path = WORKBOOK_MODELS_DIR, ship: bool = False, log=print) -> Path:
    """Train adapter `name` on the shipped base weights and write `out_root/lora-<name>` (and the shipped copy).

    Raises:
        RuntimeError: the adapter missed its accuracy bar after rounding to bfloat16; nothing was saved.
    """
    from safetensors.torch import save_file
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

    from labs.core.models.build import SHIPPED_PHRASEBOOK_DIR

    recipe = RECIPES[name]
    torch.set_num_threads(recipe.num_threads)
    tok = PreTrainedTokenizerFast.from_pretrained(SHIPPED_PHRASEBOOK_DIR)
    model = Qwen2ForCausalLM.from_pretrained(SHIPPED_PHRASEBOOK_DIR, dtype=torch.float32)
    wrapped, record = train_adapter(model, tok, recipe, log)
    with torch.no_grad():  # judge what the file holds and vLLM runs: bfloat16 A and B
        for m in wrapped.values():
            m.lora_A.copy_(m.lora_A.to(torch.bfloat16).float())
            m.lora_B.copy_(m.lora_B.to(torch.bfloat16).float())
    record["accuracy"] = accuracy = exact_share(model, tok, adapter_pairs(name))
    log(f"  {name}: exact answers on its data after rounding to bfloat16: {accuracy:.1%}")
    if accuracy < recipe.min_accuracy:
        raise RuntimeError(f"adapter {name} reached {accuracy:.1%} (bar {recipe.min_accuracy:.0%}); not saved")
    out_dir = out_root / f"lora-{name}"
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(peft_state_dict(wrapped), tmp / "adapter_model.safetensors")
    (tmp / "adapter_config.json").write_text(json.dumps(adapter_config(recipe), indent=2) + "\n", encoding="utf-8")
    info = {"key": adapter_key(name), "name": name, "base_key": phrasebook_key(), "scaling": lora_scaling(recipe),
            "recipe": {k: v for k, v in recipe.__dict__.items()}, "train": record}
    (tmp / "build_info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    if ship:
        shutil.rmtree(shipped_adapter_dir(name), ignore_errors=True)
        shutil.copytree(out_dir, shipped_adapter_dir(name))
        log(f"  replaced the shipped adapter in {shipped_adapter_dir(name)}: commit it")
    return out_dir
