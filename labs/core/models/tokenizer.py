"""Train the workbook's byte-level BPE tokenizer offline, on text the project ships.

Why train one: no tokenizer can be downloaded here, and a byte-level BPE (the kind Qwen2 and
GPT-2 use) never meets an unknown character, so Japanese, Chinese and English all round-trip.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from labs.core.models.phrasebook import DATA_DIR, load_phrasebook, translation_messages

VOCAB_SIZE = 4096  # enough merges that most CJK characters in the phrasebook are single tokens
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML, as Qwen2 uses: vLLM's chat endpoint and HF's apply_chat_template both render it.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _training_texts() -> list[str]:
    texts = [p.read_text(encoding="utf-8") for p in sorted(DATA_DIR.glob("corpus_*.txt"))]
    for entry in load_phrasebook():
        chat = "".join(f"{m['role']}\n{m['content']}\n" for m in translation_messages(entry.ja))
        texts.extend([entry.ja, entry.zh, chat + "assistant\n" + entry.zh])
    return texts


def train_tokenizer(out_dir: Path) -> PreTrainedTokenizerFast:
    """Train the tokenizer and save it (tokenizer.json + config with the chat template) in `out_dir`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_texts(), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_tok.save_pretrained(out_dir)
    return hf_tok
