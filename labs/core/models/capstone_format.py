"""Teaching tiny-phrasebook the capstone's prompt format (labs/core/models/prompt_format.py).

The capstone sends a long shared prefix (preface, glossary, a few-shot exchange), then a chunk of
numbered paragraphs, possibly after overlap context, and expects numbered translations back.
`tiny-phrasebook` first memorises the phrasebook in the short Lab 1 format; this second phase
shows it the capstone format built by the pipeline's OWN prompt code from the default files, with
random documents (so the per-document glossary varies), 1-3 paragraphs per chunk and 0-2
paragraphs of context, while plain-format batches keep the Lab 1 behaviour intact.

Why the prefix is computed without gradient: every example of a batch shares one prefix variant,
so its KV cache is computed once (no grad) and repeated over the batch; the model learns to
*read past* the prefix through the chunk tokens' queries. That makes a capstone step cost about
as much as a plain one, instead of ~8x.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from labs.core.models.phrasebook import PhrasebookEntry
from labs.core.models.prompt_format import PromptTemplate, number_paragraphs


@dataclass(frozen=True)
class CapstoneExample:
    """One chunk request in token ids: `prefix` is shared by the batch, `suffix` + `answer` are its own."""

    suffix: list[int]
    answer: list[int]


def prefix_variant(rng: random.Random, entries: list[PhrasebookEntry], template: PromptTemplate) -> PromptTemplate:
    """The shared prompt of a random document: its glossary terms, and (mostly) the few-shot example."""
    document = "".join(e.ja for e in rng.sample(entries, rng.randint(3, 30)))
    variant = template.for_document(document)
    if rng.random() < 0.15:  # a user may pass an empty examples file
        variant = PromptTemplate(variant.preface, variant.glossary, ())
    return variant


def chunk_request(rng: random.Random, entries: list[PhrasebookEntry], template: PromptTemplate,
                  paragraph_counts: tuple[int, ...], two_sentence_share: float = 0.15) -> tuple[list[dict[str, str]], str]:
    """(chat messages of one chunk, the expected numbered answer).

    Args:
        two_sentence_share: how often a paragraph is two random phrasebook sentences run together
            (training variety: the model should not rely on a paragraph being one sentence).
    """
    ja: list[str] = []
    zh: list[str] = []
    for _ in range(rng.choice(paragraph_counts)):
        if rng.random() < two_sentence_share:
            a, b = rng.sample(entries, 2)
            ja.append(a.ja + b.ja)
            zh.append(a.zh + b.zh)
        else:
            entry = rng.choice(entries)
            ja.append(entry.ja)
            zh.append(entry.zh)
    context = [rng.choice(entries).ja for _ in range(rng.choice((0, 1, 1, 2)))]
    return template.chunk_messages(ja, context), number_paragraphs(zh)


def capstone_batch(rng: random.Random, tok, entries: list[PhrasebookEntry], template: PromptTemplate,
                   batch_size: int, paragraph_counts: tuple[int, ...]) -> tuple[list[int], list[CapstoneExample]]:
    """A batch sharing one prefix: (prefix ids, examples)."""
    variant = prefix_variant(rng, entries, template)
    prefix = list(tok.apply_chat_template(variant.shared_messages(), return_dict=False))
    examples = []
    for _ in range(batch_size):
        messages, answer = chunk_request(rng, entries, variant, paragraph_counts)
        full = list(tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
        assert full[:len(prefix)] == prefix, "the chat template must render the shared prefix identically"
        examples.append(CapstoneExample(full[len(prefix):], tok(answer, add_special_tokens=False)["input_ids"]
                                        + [tok.eos_token_id]))
    return prefix, examples


def answer_loss(model, pad_id: int, prefix: list[int], examples: list[tuple[list[int], list[int]]]) -> torch.Tensor:
    """Cross-entropy on the answer tokens of right-padded (prompt, answer) pairs after a shared prefix.

    Right padding needs no attention mask: with causal attention a pad token only looks back, and
    its logits are never used.
    """
    num_prefix, batch_size = len(prefix), len(examples)
    seq_len = max(len(p) + len(a) for p, a in examples)
    input_ids = torch.full((batch_size, seq_len), pad_id)  # (batch, seq_len)
    labels = torch.full((batch_size, seq_len), -100)
    for row, (p, a) in enumerate(examples):
        ids = p + a
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, len(p) - 1:len(ids) - 1] = torch.tensor(a)  # position t predicts token t+1
    cache = None
    if num_prefix:
        with torch.no_grad():
            cache = model.model(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
        cache.batch_repeat_interleave(batch_size)
    positions = torch.arange(num_prefix, num_prefix + seq_len).unsqueeze(0).expand(batch_size, seq_len)
    hidden = model.model(input_ids=input_ids, past_key_values=cache, position_ids=positions,
                         use_cache=num_prefix > 0).last_hidden_state  # (batch, seq_len, hidden)
    mask = labels != -100
    return torch.nn.functional.cross_entropy(model.lm_head(hidden[mask]), labels[mask])


def held_out_requests(paragraph_counts: tuple[int, ...], num_requests: int | None = None
                      ) -> list[tuple[list[dict[str, str]], str]]:
    """Chunk requests of phrasebook sentences, as documents made of them are sent, each with a
    random document's prefix and 0-2 paragraphs of context, from their own random stream.

    Args:
        paragraph_counts: paragraphs per chunk, drawn uniformly.
        num_requests: how many; None: one per phrasebook entry, each entry first in its chunk
            (every sentence is checked once in the capstone format).
    """
    from labs.core.models.phrasebook import load_phrasebook

    rng, entries, template = random.Random(12345), load_phrasebook(), PromptTemplate.load()
    if num_requests is None:
        requests = []
        for entry in entries:
            variant = prefix_variant(rng, entries, template)
            others = [rng.choice(entries) for _ in range(rng.choice(paragraph_counts) - 1)]
            context = [rng.choice(entries).ja for _ in range(rng.choice((0, 1, 2)))]
            requests.append((variant.chunk_messages([e.ja for e in [entry, *others]], context),
                             number_paragraphs([e.zh for e in [entry, *others]])))
        return requests
    return [chunk_request(rng, entries, prefix_variant(rng, entries, template), paragraph_counts, 0.0)
            for _ in range(num_requests)]


@torch.inference_mode()
def capstone_accuracy(model, tok, requests: list[tuple[list[dict[str, str]], str]], max_new_tokens: int = 64) -> float:
    """Exact-match rate of greedy answers (HF generate) to capstone chunk requests."""
    model.eval()
    correct = 0
    for messages, answer in requests:
        prompt = list(tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False)
        correct += tok.decode(out[0, len(prompt):], skip_special_tokens=True) == answer
    return correct / len(requests)
