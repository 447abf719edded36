"""The serving benchmark's workload, as vLLM's random dataset: prompts of about
`prompt_len` words and answers of `output_len` tokens, each drawn within ±`len_jitter`,
the same for a given seed whichever server is measured. (The mixed workload, long prompts
with short questions of two tiers, is serve_mixed.py's.)"""

import random
from dataclasses import dataclass

from tome.errors import InvalidRequestError
from tome.eval.word_lists import ENGLISH_WORDS


@dataclass(frozen=True)
class ServeBenchConfig:
    base_url: str | None = None  # an OpenAI-compatible /v1 URL; None: our engine in process
    model: str | None = None  # the served model's id; in process, the model to load
    api_key: str = "unused"
    num_prompts: int = 64
    concurrency: int | None = 16  # most requests in flight; None: as many as arrive
    request_rate: float | None = None  # Poisson arrivals a second; None: all at once
    prompt_len: int = 512
    output_len: int = 128
    len_jitter: float = 0.0
    seed: int = 0
    workload: str = "uniform"  # or "mixed": long prompts with short questions of two tiers
    num_long_prompts: int = 2  # mixed: the long ones, all sent first
    long_prompt_len: int = 5000  # mixed: words of each long prompt
    short_delay_s: float = 1.0  # mixed: questions start this long after the long prompts
    pro_api_key: str | None = None  # mixed, over HTTP: the pro tier's key (else api_key)

    def __post_init__(self) -> None:
        checks = [
            (self.num_prompts >= 1, "--num-prompts must be >= 1"),
            (self.concurrency is None or self.concurrency >= 1, "--concurrency must be >= 1"),
            (self.request_rate is None or self.request_rate > 0, "--request-rate must be > 0"),
            (self.prompt_len >= 1 and self.output_len >= 2, "lengths: prompt >= 1, output >= 2"),
            (0.0 <= self.len_jitter < 1.0, "--len-jitter must be in [0, 1)"),
            (self.base_url is None or self.model, "--model: the served model's id is needed"),
            (self.workload in ("uniform", "mixed"), "--workload must be uniform or mixed"),
            (self.num_long_prompts >= 1, "--num-long-prompts must be >= 1"),
            (self.long_prompt_len >= 1, "--long-prompt-len must be >= 1"),
            (self.short_delay_s >= 0, "--short-delay must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRequestError(message)

    @property
    def target_name(self) -> str:
        """What is measured, as a report's title names it."""
        return self.base_url or "in-process engine"


@dataclass(frozen=True)
class BenchRequest:
    prompt: str
    max_tokens: int


def make_workload(config: ServeBenchConfig) -> list[BenchRequest]:
    rng = random.Random(config.seed)

    def jittered(length: int) -> int:
        spread = int(length * config.len_jitter)
        return max(1, rng.randint(length - spread, length + spread))

    requests = []
    for i in range(config.num_prompts):
        # A distinct opening word per request keeps prefix caching from sharing prompts.
        words = [f"Request{i}:", *rng.choices(ENGLISH_WORDS, k=jittered(config.prompt_len) - 1)]
        requests.append(BenchRequest(" ".join(words), max(2, jittered(config.output_len))))
    return requests
