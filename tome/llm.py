"""LLM: the offline Python API, shaped like vLLM's."""

import itertools
from collections.abc import Sequence as Seq
from typing import Any

from tome.engine.config import EngineConfig
from tome.engine.context_cache import ContextInfo
from tome.engine.engine import Engine
from tome.engine.outputs import RequestOutput
from tome.engine.sampling_params import SamplingParams
from tome.errors import InvalidRequestError, TomeError

Message = dict[str, str]
Prompt = str | list[int]


class LLM:
    """`LLM()` loads the embedded SmolLM2; `LLM(model=dir | hub id | file.gguf, ...)` any
    other. Keyword arguments are EngineConfig fields."""

    def __init__(self, model: str | None = None, **engine_args: Any) -> None:
        self.engine = Engine(EngineConfig(model=model, **engine_args))
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(
        self,
        prompts: Prompt | Seq[Prompt],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        context: str | None = None,
    ) -> list[RequestOutput]:
        """Generate for one prompt or a batch. A single bad prompt raises its typed error;
        in a batch a bad prompt comes back alone with finish_reason "error". With
        `context`, every prompt continues that cached context (see cache_context)."""
        single = isinstance(prompts, str) or (
            bool(prompts) and isinstance(prompts, list) and isinstance(prompts[0], int)
        )
        batch = [prompts] if single else list(prompts)
        return self._generate(batch, sampling_params, single, context)

    def cache_context(self, name: str, prompt: Prompt, ttl_seconds: float = 3600) -> ContextInfo:
        """Prefill `prompt` (a book, say) and pin it under `name` for ttl_seconds: requests
        starting with it, by name or by the same tokens, pay only for their own tokens."""
        request_id = str(next(self._ids))
        self.engine.cache_context(request_id, name, prompt, ttl_seconds)
        outputs: dict[str, RequestOutput] = {}
        self._run_until_done(outputs)
        if outputs[request_id].finish_reason != "stop":
            raise TomeError(f"caching context {name!r} failed: {outputs[request_id].error}")
        return self.engine.contexts.get(name)

    def list_contexts(self) -> list[ContextInfo]:
        return self.engine.contexts.all()

    def refresh_context(self, name: str, ttl_seconds: float) -> ContextInfo:
        """Give a cached context a new time to live, counted from now."""
        return self.engine.contexts.refresh(name, ttl_seconds)

    def delete_context(self, name: str) -> None:
        self.engine.contexts.delete(name)

    def _generate(
        self, batch: list[Prompt], sampling_params, single: bool, context: str | None = None
    ) -> list[RequestOutput]:
        params = self._params_for(batch, sampling_params)
        outputs: dict[str, RequestOutput] = {}
        order = []
        for prompt, p in zip(batch, params, strict=True):
            request_id = str(next(self._ids))
            order.append(request_id)
            try:
                self.engine.add_request(request_id, prompt, p, context=context)
            except TomeError as exc:
                if single:
                    raise
                outputs[request_id] = RequestOutput(
                    request_id, [], finish_reason="error", error=exc.message
                )
        self._run_until_done(outputs)
        return [outputs[request_id] for request_id in order]

    def chat(
        self,
        messages: Seq[Message] | Seq[Seq[Message]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Chat with the model's chat template; one conversation or a list of them."""
        single = bool(messages) and isinstance(messages[0], dict)
        conversations = [messages] if single else list(messages)
        prompts = [self.tokenizer.apply_chat_template(list(c)) for c in conversations]
        return self._generate(prompts, sampling_params, single)

    def _params_for(self, batch: list, sampling_params) -> list[SamplingParams]:
        if sampling_params is None:
            return [SamplingParams() for _ in batch]
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * len(batch)
        if len(sampling_params) != len(batch):
            raise InvalidRequestError("give one SamplingParams, or one per prompt")
        return list(sampling_params)

    def _run_until_done(self, outputs: dict[str, RequestOutput]) -> None:
        while self.engine.has_unfinished():
            for out in self.engine.step():
                if out.finished:
                    outputs[out.request_id] = out
