"""Where benchmark prompts come from: random token lengths, fixed lengths, or a file.

`random` mirrors vLLM's `RandomDataset` (`vllm bench serve --dataset-name random`): each request
draws an input length uniformly from [input_len * (1 - range_ratio), input_len * (1 + range_ratio)]
and an output length likewise, and its prompt is that many token ids decoded to text. The ids
are decoded by the server's own tokenizer (`POST /detokenize`, then `/tokenize` to count), so
the prompt has the length asked for whatever model is served; a server without those endpoints
(not vLLM) gets prompts of random words instead, whose token counts are then only estimates.
`fixed` is `random` with range_ratio 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

WORDS = ("time person year way day thing man world life hand part child eye woman place work week case "
         "point number group problem fact cat tea river mountain").split()


@dataclass(frozen=True)
class SampleRequest:
    """One prompt to send (vLLM's `SampleRequest` fields).

    Attributes:
        prompt: the text.
        prompt_len: its length in the server's tokens (an estimate for word prompts / files).
        expected_output_len: `max_tokens` for this request.
    """

    prompt: str
    prompt_len: int
    expected_output_len: int


def sample_lengths(rng: np.random.Generator, num_prompts: int, mean_len: int, range_ratio: float) -> np.ndarray:
    """Integer lengths uniform in [floor(mean*(1-r)), ceil(mean*(1+r))] (at least 1), as vLLM samples them."""
    low = max(1, int(np.floor(mean_len * (1 - range_ratio))))
    high = max(low, int(np.ceil(mean_len * (1 + range_ratio))))
    return rng.integers(low, high + 1, size=num_prompts)


def _server_post(base_url: str, path: str, body: dict, api_key: str | None) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    reply = requests.post(f"{base_url}{path}", json=body, headers=headers, timeout=30)
    reply.raise_for_status()
    return reply.json()


def _token_prompt(base_url: str, model: str, token_ids: list[int], api_key: str | None) -> tuple[str, int]:
    """Decode `token_ids` with the server's tokenizer; return (text, its re-encoded token count).

    Why re-encode: N ids decoded and encoded again need not give N tokens (BPE merges across
    the seams); like vLLM we trim to the target length and report what the server will count.
    """
    text = _server_post(base_url, "/detokenize", {"model": model, "tokens": token_ids}, api_key)["prompt"]
    ids = _server_post(base_url, "/tokenize", {"model": model, "prompt": text, "add_special_tokens": False},
                       api_key)["tokens"]
    if len(ids) > len(token_ids):
        text = _server_post(base_url, "/detokenize", {"model": model, "tokens": ids[:len(token_ids)]},
                            api_key)["prompt"]
        ids = ids[:len(token_ids)]
    return text, len(ids)


def _has_tokenizer_endpoints(base_url: str, model: str, api_key: str | None) -> bool:
    """Does the server offer vLLM's `/tokenize` (other OpenAI-compatible servers do not)?"""
    try:
        _server_post(base_url, "/tokenize", {"model": model, "prompt": "a"}, api_key)
        return True
    except requests.RequestException:
        return False


def random_requests(num_prompts: int, input_len: int, output_len: int, *, range_ratio: float = 0.0,
                    base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                    vocab_size: int | None = None, seed: int = 0) -> list[SampleRequest]:
    """Prompts of random tokens with (almost) exact lengths, like vLLM's `random` dataset.

    Args:
        num_prompts: how many requests.
        input_len: mean prompt length in tokens.
        output_len: mean `max_tokens`.
        range_ratio: 0 gives every request exactly these lengths.
        base_url: a vLLM server whose tokenizer decodes the ids (None: random words).
        model: the served model name.
        api_key: for the server.
        vocab_size: ids are drawn below this (default: 1000, safe for any tokenizer; the ids
            only need to decode to something).
        seed: the same seed gives the same prompts.

    Returns:
        One `SampleRequest` per prompt.
    """
    rng = np.random.default_rng(seed)
    input_lens = sample_lengths(rng, num_prompts, input_len, range_ratio)
    output_lens = sample_lengths(rng, num_prompts, output_len, range_ratio)
    use_server = bool(base_url and model) and _has_tokenizer_endpoints(base_url, model, api_key)
    requests_: list[SampleRequest] = []
    for i, (n_in, n_out) in enumerate(zip(input_lens, output_lens)):
        if use_server:
            # Like vLLM: consecutive ids from a random offset, so prompts differ from the first
            # token on and no two share a prefix the prefix cache could reuse.
            start = int(rng.integers(0, vocab_size or 1000))
            ids = [(start + i + k) % (vocab_size or 1000) + 10 for k in range(int(n_in))]  # skip low special ids
            text, n_tokens = _token_prompt(base_url, model, ids, api_key)
        else:
            text, n_tokens = " ".join(rng.choice(WORDS, size=int(n_in))), int(n_in)
        requests_.append(SampleRequest(text, n_tokens, int(n_out)))
    return requests_


def file_requests(path: str | Path, num_prompts: int, output_len: int) -> list[SampleRequest]:
    """Prompts from a file: one per line, or JSONL with a "prompt" field (vLLM's `custom` format).

    Args:
        path: the file. A JSONL line may also carry "output_tokens" (overrides `output_len`).
        num_prompts: how many to use; the file is cycled when it has fewer.
        output_len: `max_tokens` for lines that do not say.

    Returns:
        The requests; prompt_len is a word count (the server's usage gives the true count).
    """
    rows: list[tuple[str, int]] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            item = json.loads(line)
            rows.append((item["prompt"], int(item.get("output_tokens", output_len))))
        else:
            rows.append((line, output_len))
    if not rows:
        raise ValueError(f"{path} holds no prompts (one per line, or JSONL with a 'prompt' field)")
    return [SampleRequest(rows[i % len(rows)][0], len(rows[i % len(rows)][0].split()), rows[i % len(rows)][1])
            for i in range(num_prompts)]


def write_jsonl(requests_: list[SampleRequest], path: str | Path) -> Path:
    """Save prompts in vLLM's `custom` dataset format, so `vllm bench serve` can send the same ones."""
    path = Path(path)
    path.write_text("".join(json.dumps({"prompt": r.prompt, "output_tokens": r.expected_output_len},
                                       ensure_ascii=False) + "\n" for r in requests_), encoding="utf-8")
    return path
