"""The recipes of the workbook's offline models, and the key that names what a recipe produces.

Why a key: `tiny-phrasebook`'s weights are shipped in the repository (training them takes ~10
minutes on 2 cores), and a shipped file is only right while the recipe that made it is unchanged.
The key is a hash over everything that decides the weights: the data, what the model is shown
(the rendered prompts), the model and training configs, and `BUILD_VERSION`. `make setup` installs
the shipped weights only when their recorded key equals the key the code gives now, and a test
holds CI to the same rule.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from labs.core.models.phrasebook import DATA_DIR, load_phrasebook, translation_messages
from labs.core.models.prompt_format import DEFAULT_EXAMPLES_PATH, DEFAULT_GLOSSARY_PATH, DEFAULT_PREFACE_PATH

BUILD_VERSION = 3  # bump when the training code's behaviour changes, so the shipped weights must be retrained
MIN_PHRASEBOOK_ACCURACY = 0.95  # a build below this is not saved
MIN_CAPSTONE_ACCURACY = 0.95  # phrasebook sentences sent in the capstone's format, answered exactly
SHIPPED_PHRASEBOOK_BAR = 0.99  # what the shipped weights must keep through vLLM (tests/test_hf_equivalence.py)


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of the Qwen2 tiny models, each value chosen for vLLM's CPU backend and a 2-core budget."""

    hidden_size: int = 256  # 4 heads x head_dim 64: vLLM's CPU attention rejects head_dim 16
    num_attention_heads: int = 4
    num_key_value_heads: int = 2  # grouped-query attention, as in real Qwen2: 2 query heads per KV head
    num_hidden_layers: int = 4  # enough capacity to memorise ~320 pairs within the time budget
    intermediate_size: int = 768  # 3x hidden, SwiGLU MLP
    max_position_embeddings: int = 2048  # room for the capstone's multi-sentence chunks
    rope_theta: float = 10000.0
    seed: int = 0  # weights (random or trained) are a function of this seed and the data


@dataclass(frozen=True)
class TinyLlamaConfig:
    """`tiny-llama`: a Llama-architecture model whose head counts tensor parallelism cannot split.

    Why it exists: real models differ from tiny-phrasebook in ways the labs must survive (another
    architecture, 9 query heads sharing 3 KV heads, which TP=2 cannot divide). Every lab runs on
    it in CI; its weights are random from `seed`, so its text is noise and no lab may expect more.
    """

    hidden_size: int = 576  # 9 heads x head_dim 64 (vLLM's CPU attention needs head_dim >= 32)
    num_attention_heads: int = 9  # odd on purpose: TP=2 cannot split 9 heads
    num_key_value_heads: int = 3  # 3 query heads per KV head, as in SmolLM2-style Llama models
    num_hidden_layers: int = 2  # depth does not matter for random weights; 2 keeps start-up fast
    intermediate_size: int = 1536
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Phase 1 of tiny-phrasebook: memorise the phrasebook, so large steps and many epochs."""

    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    max_epochs: int = 100  # a cap; training stops at the first evaluation that meets the target
    first_eval_epoch: int = 40  # evaluating costs ~2 s; before epoch ~40 the model is not there yet
    eval_every_epochs: int = 10
    stop_accuracy: float = 0.995  # stop once (nearly) every pair is reproduced exactly
    # No wall-clock cut-off on purpose: a time limit would make the weights depend on machine load.
    num_threads: int = 2  # fixed, so the float reductions (and the weights) do not vary with core count


@dataclass(frozen=True)
class CapstoneTrainConfig:
    """Phase 2 of tiny-phrasebook: the capstone's prompt format (labs/core/models/capstone_format.py).

    Fine-tuning after phase 1 (not mixing from the start) keeps phase 1, and so the Lab 1 model,
    exactly as before up to that point; plain-format batches in between keep it there.
    """

    # The held-out accuracy per step count is in the shipped build_info.json ("capstone"); fewer
    # steps left some phrasebook sentences running on past their translation in this format.
    steps: int = 1500
    learning_rate: float = 1e-3  # peak, after warmup, decaying linearly to 10%: lower than phase 1's (3e-3),
    warmup_steps: int = 50  # the phrasebook is already memorised and a large first step would shake it
    batch_size: int = 32
    plain_every: int = 3  # every 3rd step is a plain-format batch, so Lab 1's format is not forgotten
    # One paragraph per chunk (after 0-2 paragraphs of context): a 4-layer model learns slowly which
    # `[n]` of a multi-paragraph chunk it is on, so the pipeline sends this model one paragraph at a time.
    paragraph_counts: tuple[int, ...] = (1,)
    max_chunk_paragraphs: int = 1  # recorded in build_info.json; the pipeline's "auto" chunking reads it
    eval_every_steps: int = 500  # an evaluation costs ~20 s
    num_eval_requests: int = 64
    # No early stop: the full schedule decays the learning rate, which settles the last sentences.


def data_fingerprint() -> str:
    """A hash over what training reads: the data files, and the prompts as the code renders them.

    Why the rendering and not the source files: the prompt code may be refactored or moved without
    changing a byte of what the model sees, and that must not invalidate the shipped weights; any
    change to a rendered prompt, a data file or the tokenizer's settings must.

    Returns:
        A sha256 hex digest.
    """
    from labs.core.models import capstone_format
    from labs.core.models.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, VOCAB_SIZE

    h = hashlib.sha256()
    # The phrasebook's files, then the prompt format's, each sorted by name: the order that defines the key.
    prompt_names = {p.name for p in (DEFAULT_PREFACE_PATH, DEFAULT_GLOSSARY_PATH, DEFAULT_EXAMPLES_PATH)}
    files = sorted(p for p in DATA_DIR.iterdir() if p.is_file())
    for path in [p for p in files if p.name not in prompt_names] + [p for p in files if p.name in prompt_names]:
        h.update(path.name.encode() + path.read_bytes())
    rendered = {
        "lab1": [translation_messages(e.ja) for e in load_phrasebook()],
        "capstone": capstone_format.held_out_requests(CapstoneTrainConfig.paragraph_counts),
        "tokenizer": [CHAT_TEMPLATE, SPECIAL_TOKENS, VOCAB_SIZE],
    }
    h.update(json.dumps(rendered, ensure_ascii=False, sort_keys=True).encode())
    return h.hexdigest()


def build_key(name: str, model_cfg: object, train_cfg: TrainConfig | None = None,
              capstone_cfg: CapstoneTrainConfig | None = None) -> str:
    """The recipe key of model `name` (16 hex digits).

    Args:
        name: the model's name.
        model_cfg: its shape (a dataclass).
        train_cfg: phase 1 training, for a trained model.
        capstone_cfg: phase 2 training, for a trained model.

    Returns:
        The key recorded as `key` in the model's `build_info.json`.
    """
    payload = {
        "name": name, "version": BUILD_VERSION, "data": data_fingerprint(),  # random models too: the shipped tokenizer they use is built from it
        "model": asdict(model_cfg), "train": asdict(train_cfg) if train_cfg else None,
        "capstone": asdict(capstone_cfg) if capstone_cfg else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def phrasebook_key() -> str:
    """The key of tiny-phrasebook under today's recipe."""
    return build_key("tiny-phrasebook", TinyModelConfig(), TrainConfig(), CapstoneTrainConfig())
