"""Answers from any OpenAI-compatible endpoint through the official `openai` client's chat
completions, greedy, a few requests at a time."""

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import openai

from tome.errors import InvalidRequestError
from tome.eval.items import EvalItem, TextEncoder
from tome.loader.error_text import one_line


class EndpointBackend:
    # The endpoint's window is its own; a prompt over it comes back as an error status.
    window_tokens = None

    def __init__(
        self, client: openai.OpenAI, model: str, encoder: TextEncoder, concurrency: int = 4
    ) -> None:
        if concurrency < 1:
            raise InvalidRequestError("--concurrency must be >= 1")
        self.client = client
        self.name = model
        self.encoder = encoder
        self.concurrency = concurrency

    @classmethod
    def connect(
        cls,
        base_url: str,
        api_key: str | None,
        model: str,
        encoder: TextEncoder,
        concurrency: int = 4,
        timeout: float = 600.0,
        max_retries: int = 2,
    ) -> "EndpointBackend":
        if not base_url.startswith(("http://", "https://")):
            raise InvalidRequestError(f"--base-url must start with http:// or https://: {base_url}")
        # Local servers take any key, but the client refuses to start without one.
        client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "none", timeout=timeout, max_retries=max_retries
        )
        return cls(client, model, encoder, concurrency)

    def __call__(self, items: Sequence[EvalItem]) -> list[str]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._answer, items))

    def _answer(self, item: EvalItem) -> str:
        try:
            response = self.client.chat.completions.create(
                model=self.name,
                messages=[{"role": "user", "content": item.prompt}],
                temperature=0.0,
                max_tokens=item.max_answer_tokens,
            )
        except openai.APIConnectionError as exc:
            raise InvalidRequestError(
                f"cannot reach {self.client.base_url}: {one_line(exc)}"
            ) from exc
        except openai.APIStatusError as exc:
            raise InvalidRequestError(
                f"{self.client.base_url} answered {exc.status_code}: {one_line(exc)}"
            ) from exc
        return response.choices[0].message.content or ""
