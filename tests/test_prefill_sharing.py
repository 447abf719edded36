"""No one waits behind a long prompt: on a tiny model, with a step budget of 64 tokens, a
short request that arrives while a 700-token prompt is being prefilled gets its first token
within two steps (one of higher priority within one), the long prompt still progresses
every step, even under a stream of short requests, and finishes; every greedy output
equals transformers', with and without the sharing."""

import random

import pytest

from tests.reference import load_reference, reference_greedy
from tome import EngineConfig, SamplingParams
from tome.engine.engine import Engine

BUDGET = 64
LONG = 700
rng = random.Random(0)
LONG_PROMPT = [rng.randrange(3, 49152) for _ in range(LONG)]
SHORT_PROMPTS = [[rng.randrange(3, 49152) for _ in range(n)] for n in (5, 9, 3, 12, 7, 4, 6, 8)]
MAX_NEW = 4


def greedy() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_llama):
    # No prefix caching: each test's long prompt must be computed, not found.
    return Engine(
        EngineConfig(
            model=str(tiny_llama), max_num_batched_tokens=BUDGET, enable_prefix_caching=False
        )
    )


@pytest.fixture(scope="module")
def reference(tiny_llama):
    return load_reference(tiny_llama)


def expected(reference, prompt) -> list[int]:
    return reference_greedy(reference, prompt, MAX_NEW)[0]


class Driver:
    """Steps an engine, keeping each request's tokens and the step of its first one."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.steps = 0
        self.tokens: dict[str, list[int]] = {}
        self.first_token_step: dict[str, int] = {}

    def add(self, request_id: str, prompt: list[int], priority: int = 0) -> None:
        self.engine.add_request(request_id, prompt, greedy(), priority)

    def step(self) -> None:
        self.steps += 1
        for out in self.engine.step():
            self.tokens[out.request_id] = out.token_ids
            if out.token_ids:
                self.first_token_step.setdefault(out.request_id, self.steps)

    def run(self) -> None:
        """Step until every request is done; the engine is left empty for the next test."""
        while self.engine.has_unfinished():
            self.step()
            assert self.steps < 1000, "no progress"

    def computed(self, request_id: str) -> int:
        return self.engine.requests[request_id].num_computed_tokens


def start_long(driver: Driver, priority: int = 0) -> None:
    driver.add("long", LONG_PROMPT, priority)
    for _ in range(3):  # the long prompt is now mid-prefill
        driver.step()
    assert 0 < driver.computed("long") < LONG


def test_a_short_request_arriving_mid_prefill_gets_its_first_token_within_two_steps(
    engine, reference
):
    driver = Driver(engine)
    start_long(driver)
    driver.add("short", SHORT_PROMPTS[0])
    arrived = driver.steps
    driver.run()
    assert driver.first_token_step["short"] - arrived <= 2
    assert driver.tokens["short"] == expected(reference, SHORT_PROMPTS[0])
    assert driver.tokens["long"] == expected(reference, LONG_PROMPT)


def test_a_higher_priority_request_gets_its_first_token_within_one_step(engine, reference):
    driver = Driver(engine)
    start_long(driver, priority=10)
    computed_before = driver.computed("long")
    # Longer than a share of the step: it must take the budget ahead of the running prefill.
    urgent = [rng.randrange(3, 49152) for _ in range(48)]
    driver.add("urgent", urgent, priority=0)
    driver.step()
    assert "urgent" in driver.first_token_step
    # The long one gave way without losing what it had computed.
    assert driver.computed("long") >= computed_before
    assert engine.scheduler.num_preemptions == 0
    driver.run()
    assert driver.tokens["urgent"] == expected(reference, urgent)
    assert driver.tokens["long"] == expected(reference, LONG_PROMPT)


def test_under_a_stream_of_short_requests_the_long_one_progresses_every_step(engine, reference):
    driver = Driver(engine)
    start_long(driver, priority=5)
    # A new question every step, of higher priority and as long as a whole step's budget.
    stream = [[rng.randrange(3, 49152) for _ in range(BUDGET)] for _ in range(12)]
    for i, prompt in enumerate(stream):
        before = driver.computed("long")
        driver.add(f"short-{i}", prompt, priority=0)
        driver.step()
        assert driver.computed("long") > before
        if driver.computed("long") == LONG:
            break
    driver.run()
    assert driver.tokens["long"] == expected(reference, LONG_PROMPT)


def test_a_running_stream_gets_a_token_every_step_while_a_long_prompt_is_read(engine, reference):
    driver = Driver(engine)
    prompt = SHORT_PROMPTS[1]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    engine.add_request("stream", prompt, params, priority=5)
    driver.step()
    driver.add("long", LONG_PROMPT, priority=0)  # it outranks the stream
    while driver.computed("long") < LONG:
        before = len(driver.tokens["stream"])
        driver.step()
        assert len(driver.tokens["stream"]) == before + 1
    driver.run()
    assert driver.tokens["long"] == expected(reference, LONG_PROMPT)


def run_mixed(config: EngineConfig) -> dict[str, list[int]]:
    """A long prompt, then short ones of two priorities arriving step by step."""
    driver = Driver(Engine(config))
    start_long(driver, priority=5)
    for i, prompt in enumerate(SHORT_PROMPTS):
        driver.add(f"short-{i}", prompt, priority=i % 2 * 10)
        driver.step()
    driver.run()
    return driver.tokens


def test_outputs_with_and_without_sharing_are_identical(tiny_llama, reference):
    model = str(tiny_llama)
    shared = run_mixed(EngineConfig(model=model, max_num_batched_tokens=BUDGET))
    # As before sharing: the first prompt in priority order takes what decodes leave.
    unshared = run_mixed(
        EngineConfig(
            model=model,
            max_num_batched_tokens=BUDGET,
            max_num_partial_prefills=1,
            long_prefill_token_threshold=1 << 20,
            prefill_min_share=0.0,
        )
    )
    assert shared == unshared
    assert shared["long"] == expected(reference, LONG_PROMPT)
    for i, prompt in enumerate(SHORT_PROMPTS):
        assert shared[f"short-{i}"] == expected(reference, prompt)
