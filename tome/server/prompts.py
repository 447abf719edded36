"""From an API request to engine requests: token ids of each prompt, the answer's token
budget within the model window and the tier's context limit, sampling parameters per
choice. Runs off the event loop (tokenizing a book takes a while)."""

from dataclasses import dataclass

from tome.engine.sampling_params import SamplingParams
from tome.errors import InvalidRequestError
from tome.loader.tokenizer import Tokenizer
from tome.server.errors import ContextLimitError
from tome.server.generation import ChoiceRequest
from tome.server.schemas.chat import ChatCompletionRequest
from tome.server.schemas.common import SamplingFields
from tome.server.schemas.completions import CompletionRequest
from tome.server.tiers import Tier

SEED_RANGE = 2**64
MAX_ENGINE_REQUESTS = 64  # answers one API request may ask for (prompts x n)


@dataclass
class Plan:
    choices: list[ChoiceRequest]
    # Tokens of a context cache the prompt starts with (/v1/caching): reported as cached
    # even where the engine recomputes the cache's last, partial KV block.
    cached_prefix: int = 0

    @property
    def prompt_tokens(self) -> int:
        seen = {c.prompt_index: len(c.prompt_ids) for c in self.choices}
        return sum(seen.values())


def plan_chat(body: ChatCompletionRequest, tokenizer: Tokenizer, window: int, tier: Tier) -> Plan:
    messages = [message.as_template_message() for message in body.messages]
    ids = tokenizer.apply_chat_template(messages)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return _plan(body, [ids], body.requested_max_tokens, logprobs, window, tier)


def plan_completion(body: CompletionRequest, tokenizer: Tokenizer, window: int, tier: Tier) -> Plan:
    prompts = [tokenizer.encode(p) if isinstance(p, str) else list(p) for p in body.prompts()]
    return _plan(body, prompts, body.max_tokens, body.logprobs, window, tier)


def prompt_ids_of(tokenizer: Tokenizer, prompt: str | None, messages: list | None) -> list[int]:
    """What /v1/tokenize counts: a prompt as completions would see it, or messages as chat
    would (through the chat template)."""
    if messages is not None:
        return tokenizer.apply_chat_template([m.as_template_message() for m in messages])
    return tokenizer.encode(prompt or "")


def _plan(
    body: SamplingFields,
    prompts: list[list[int]],
    max_tokens: int | None,
    logprobs: int | None,
    window: int,
    tier: Tier,
) -> Plan:
    if len(prompts) * body.n > MAX_ENGINE_REQUESTS:
        raise InvalidRequestError(
            f"{len(prompts)} prompts x n={body.n} make more than {MAX_ENGINE_REQUESTS} answers"
        )
    choices = []
    for prompt_index, ids in enumerate(prompts):
        if not ids:
            raise InvalidRequestError("the prompt is empty")
        budget = answer_budget(len(ids), max_tokens, window, tier)
        for n in range(body.n):
            index = prompt_index * body.n + n
            params = _sampling_params(body, budget, logprobs, n)
            choices.append(ChoiceRequest(index, prompt_index, ids, params))
    return Plan(choices)


def answer_budget(prompt_tokens: int, requested: int | None, window: int, tier: Tier) -> int:
    """max_tokens for the engine: as requested if prompt and answer fit, the room left when
    not given; the prompt must leave room for one token."""
    limit, what = window, "the model's window"
    if tier.max_context_tokens is not None and tier.max_context_tokens < window:
        limit, what = tier.max_context_tokens, f"the {tier.name!r} tier's context limit"
    if prompt_tokens >= limit:
        raise ContextLimitError(
            f"the prompt has {prompt_tokens} tokens; {what} is {limit} tokens and at least "
            "one must be left for the answer"
        )
    if requested is None:
        return limit - prompt_tokens
    if prompt_tokens + requested > limit:
        raise ContextLimitError(
            f"the prompt's {prompt_tokens} tokens plus max_tokens={requested} exceed {what} "
            f"of {limit} tokens; ask for at most {limit - prompt_tokens}"
        )
    return requested


def _sampling_params(
    body: SamplingFields, max_tokens: int, logprobs: int | None, n: int
) -> SamplingParams:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        # Each of n choices draws its own numbers, reproducibly from the one seed.
        seed=None if body.seed is None else (body.seed + n) % SEED_RANGE,
        stop=stop,
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
    )
