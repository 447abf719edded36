"""Answers from our engine in process: greedy, with the model's chat template."""

from collections.abc import Sequence
from pathlib import Path

from tome.engine.sampling_params import SamplingParams
from tome.errors import InvalidRequestError
from tome.eval.items import EvalItem
from tome.llm import LLM
from tome.loader import embedded_model_path


class EngineBackend:
    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        model = llm.engine.config.model
        self.name = Path(model).name if model else embedded_model_path().stem
        self.encoder = llm.tokenizer
        # The chat template wraps each message in a few tokens of its own, which must fit
        # the window (and the KV pool) too.
        template = llm.tokenizer.apply_chat_template([{"role": "user", "content": ""}])
        engine = llm.engine
        self.window_tokens = min(engine.max_model_len, engine.kv_capacity_tokens) - len(template)

    def __call__(self, items: Sequence[EvalItem]) -> list[str]:
        conversations = [[{"role": "user", "content": item.prompt}] for item in items]
        params = [SamplingParams(temperature=0.0, max_tokens=i.max_answer_tokens) for i in items]
        outputs = self.llm.chat(conversations, params)
        for item, output in zip(items, outputs, strict=True):
            if output.finish_reason == "error":
                raise InvalidRequestError(
                    f"{item.spec.task} at {item.spec.context_length} tokens: {output.error}"
                )
        return [output.text for output in outputs]
