"""The public API, shaped like vLLM's: `LLM(model=...)`, `generate`, `chat`, `SamplingParams`.

Code written against vLLM's offline API runs against the mini engine by changing the import:

    from labs.core.mini.llm import LLM, SamplingParams
    llm = LLM(model="tiny-phrasebook")
    outputs = llm.generate(["Hello"], SamplingParams(temperature=0.0, max_tokens=8))
    print(outputs[0].outputs[0].text)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tqdm import tqdm
from transformers import AutoTokenizer

from labs.core.mini.config import Config
from labs.core.mini.engine import LLMEngine
from labs.core.mini.request import Request, RequestStatus
from labs.core.mini.sampler import SamplingParams
from labs.core.models import resolve_model

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]

Prompt = str | list[int] | dict[str, Any]  # text, token ids, or vLLM's {"prompt_token_ids": [...]}


@dataclass
class CompletionOutput:
    """One generated sequence (vLLM's `CompletionOutput`, the fields labs read)."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop": sampled EOS; "length": reached max_tokens


@dataclass
class RequestOutput:
    """A finished request (vLLM's `RequestOutput`)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    num_cached_tokens: int  # prompt tokens whose K/V came from the prefix cache
    finished: bool = True


class LLM:
    """An offline engine for one model: give it prompts, get completions (as `vllm.LLM`)."""

    def __init__(self, model: str, **config_kwargs: Any) -> None:
        """Args:
            model: a model folder, or a name `labs.core.models.resolve_model` knows ("tiny-phrasebook").
            **config_kwargs: any `labs.core.mini.config.Config` field (block_size, num_kv_blocks, ...).
        """
        model_path = resolve_model(model).path
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.config = Config(model=model_path, **config_kwargs)
        eos_token_id = self.config.shape.eos_token_id
        if eos_token_id is None:
            eos_token_id = self.tokenizer.eos_token_id
        self.llm_engine = LLMEngine(self.config, eos_token_id)

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def generate(self, prompts: Prompt | list[Prompt],
                 sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Run every prompt to completion, batched by the engine as they fit.

        Args:
            prompts: one prompt or a list; each a string, a list of token ids, or a dict with
                "prompt_token_ids" (vLLM's TokensPrompt).
            sampling_params: one for all prompts, or one per prompt; default: SamplingParams().
            use_tqdm: show a progress bar of finished prompts.

        Returns:
            One output per prompt, in the order of `prompts`.
        """
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        texts, prompt_token_ids = zip(*(self._tokenize(p) for p in prompts)) if prompts else ((), ())
        return self._run(list(texts), list(prompt_token_ids), sampling_params, use_tqdm)

    def chat(self, messages: list[dict[str, str]] | list[list[dict[str, str]]],
             sampling_params: SamplingParams | list[SamplingParams] | None = None,
             use_tqdm: bool = True) -> list[RequestOutput]:
        """Generate replies to conversations, each rendered by the model's chat template.

        Args:
            messages: one conversation ([{"role": ..., "content": ...}, ...]) or a list of them.
            sampling_params: as in `generate`.
            use_tqdm: show a progress bar.
        """
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        # As vLLM: render the template to text, then tokenize without adding special tokens again.
        texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                 for c in conversations]
        prompt_token_ids = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        return self._run(texts, prompt_token_ids, sampling_params, use_tqdm)

    def _tokenize(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, dict):
            return prompt.get("prompt"), list(prompt["prompt_token_ids"])
        return None, list(prompt)

    def _run(self, texts: list[str | None], prompt_token_ids: list[list[int]],
             sampling_params: SamplingParams | list[SamplingParams] | None, use_tqdm: bool) -> list[RequestOutput]:
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params or SamplingParams()] * len(prompt_token_ids)
        if len(sampling_params) != len(prompt_token_ids):
            raise ValueError(f"{len(sampling_params)} sampling params for {len(prompt_token_ids)} prompts")
        engine = self.llm_engine
        request_ids = [engine.add_request(ids, params) for ids, params in zip(prompt_token_ids, sampling_params)]
        finished: dict[str, Request] = {}
        with tqdm(total=len(request_ids), desc="Processed prompts", disable=not use_tqdm) as progress:
            while engine.has_unfinished_requests():
                for request in engine.step():
                    finished[request.request_id] = request
                    progress.update(1)
        return [self._output(finished[req_id], text) for req_id, text in zip(request_ids, texts)]

    def _output(self, request: Request, prompt: str | None) -> RequestOutput:
        finish_reason = "stop" if request.status == RequestStatus.FINISHED_STOPPED else "length"
        text = self.tokenizer.decode(request.output_token_ids, skip_special_tokens=True)
        completion = CompletionOutput(0, text, list(request.output_token_ids), finish_reason)
        return RequestOutput(request.request_id, prompt, list(request.prompt_token_ids), [completion],
                             self.llm_engine.pop_num_cached_tokens(request.request_id))
