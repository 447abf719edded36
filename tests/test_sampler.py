"""The sampler against independent references: torch.argmax, softmax frequencies,
transformers' RepetitionPenaltyLogitsProcessor, hand-computed penalties, log_softmax."""

from collections import Counter
from dataclasses import dataclass, field

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from tome.engine.sampler import apply_penalties, sample
from tome.engine.sampling_params import SamplingParams


@dataclass
class Row:
    params: SamplingParams
    prompt_token_ids: list[int] = field(default_factory=list)
    output_token_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None


def seeded(params: SamplingParams) -> Row:
    """A row the way the engine builds one: a generator seeded once per request."""
    assert params.seed is not None
    return Row(params, generator=torch.Generator().manual_seed(params.seed))


def draw_many(logits: torch.Tensor, params: SamplingParams, n: int) -> list[int]:
    """n independent draws from one distribution, in a single batched call."""
    rows = [Row(params) for _ in range(n)]
    return [t.token_id for t in sample(logits.expand(n, -1), rows)]


@pytest.fixture(autouse=True)
def _fixed_global_rng() -> None:
    torch.manual_seed(1234)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_greedy_equals_argmax(dtype: torch.dtype) -> None:
    logits = torch.randn(16, 1000).to(dtype)
    rows = [Row(SamplingParams(temperature=0.0)) for _ in range(16)]
    out = sample(logits, rows)
    assert [t.token_id for t in out] == logits.float().argmax(dim=-1).tolist()
    assert all(t.logprob is None for t in out)


def test_top_k_1_is_greedy() -> None:
    logits = torch.randn(8, 500)
    rows = [Row(SamplingParams(temperature=1.5, top_k=1)) for _ in range(8)]
    for _ in range(5):
        assert [t.token_id for t in sample(logits, rows)] == logits.argmax(dim=-1).tolist()


def test_tiny_top_p_is_greedy() -> None:
    logits = torch.randn(1, 300)
    tokens = draw_many(logits, SamplingParams(temperature=2.0, top_p=1e-6), 2000)
    assert set(tokens) == {int(logits.argmax())}


def test_greedy_rows_unaffected_by_random_neighbours() -> None:
    logits = torch.randn(6, 200)
    rows = [
        Row(SamplingParams(temperature=0.0)),
        Row(SamplingParams(temperature=1.0, top_k=5)),
        seeded(SamplingParams(temperature=0.8, top_p=0.9, seed=3)),
        Row(SamplingParams(temperature=0.0)),
        Row(SamplingParams(temperature=1.0, min_p=0.2)),
        Row(SamplingParams(temperature=0.0)),
    ]
    out = [t.token_id for t in sample(logits, rows)]
    greedy = logits.argmax(dim=-1).tolist()
    assert [out[i] for i in (0, 3, 5)] == [greedy[i] for i in (0, 3, 5)]


def test_input_logits_not_modified() -> None:
    logits = torch.randn(3, 50)
    before = logits.clone()
    rows = [
        Row(SamplingParams(repetition_penalty=1.5, presence_penalty=1.0), [1, 2], [3, 3]),
        Row(SamplingParams(temperature=0.5, top_k=3, top_p=0.5, min_p=0.1)),
        Row(SamplingParams(temperature=0.0, frequency_penalty=2.0), [], [4]),
    ]
    sample(logits, rows)
    assert torch.equal(logits, before)


# --- seeded rows -------------------------------------------------------------------------


def run_steps(logits: torch.Tensor, batch: list[Row], watch: int, steps: int) -> list[int]:
    """Sample `steps` times with the same logits; return the tokens of row `watch`."""
    return [sample(logits, batch)[watch].token_id for _ in range(steps)]


def test_seeded_row_is_reproducible_and_independent_of_batch() -> None:
    vocab, steps = 64, 30
    row_logits = torch.randn(vocab) * 0.5  # flat enough that draws vary
    params = SamplingParams(temperature=1.0, seed=7)

    alone = run_steps(row_logits[None], [seeded(params)], 0, steps)
    again = run_steps(row_logits[None], [seeded(params)], 0, steps)
    assert alone == again
    assert len(set(alone)) > 5

    neighbours = [
        Row(SamplingParams(temperature=1.0)),
        seeded(SamplingParams(temperature=0.7, top_k=10, seed=99)),
        Row(SamplingParams(temperature=0.0)),
        Row(SamplingParams(temperature=1.3, top_p=0.8, min_p=0.05)),
    ]
    batch = [*neighbours[:2], seeded(params), *neighbours[2:]]
    logits = torch.randn(len(batch), vocab)
    logits[2] = row_logits
    assert run_steps(logits, batch, 2, steps) == alone

    other_seed = run_steps(row_logits[None], [seeded(SamplingParams(seed=8))], 0, steps)
    assert other_seed != alone


# --- distributions -----------------------------------------------------------------------


def chi_square(tokens: list[int], probs: torch.Tensor) -> float:
    counts = Counter(tokens)
    expected = probs * len(tokens)
    return sum((counts[i] - e) ** 2 / e for i, e in enumerate(expected.tolist()))


# Chi-square critical value for 4 degrees of freedom at p = 1e-4 is 23.5: loose on purpose.
CHI2_BOUND_DF4 = 25.0


def test_temperature_matches_softmax_frequencies() -> None:
    logits = torch.tensor([[1.0, 0.5, 0.0, -0.5, -1.0]])
    temperature = 0.7
    expected = torch.softmax(logits[0] / temperature, dim=-1)
    tokens = draw_many(logits, SamplingParams(temperature=temperature), 20_000)
    assert chi_square(tokens, expected) < CHI2_BOUND_DF4


def test_seeded_draws_match_softmax_frequencies() -> None:
    logits = torch.tensor([[0.3, 1.2, -0.4, 0.0, 0.8]])
    expected = torch.softmax(logits[0] / 1.3, dim=-1)
    rows = [seeded(SamplingParams(temperature=1.3, seed=s)) for s in range(4000)]
    tokens = [t.token_id for t in sample(logits.expand(len(rows), -1), rows)]
    assert chi_square(tokens, expected) < CHI2_BOUND_DF4


def test_top_k_keeps_only_k_best() -> None:
    logits = torch.randn(1, 100)
    tokens = draw_many(logits, SamplingParams(temperature=5.0, top_k=3), 5000)
    assert set(tokens) == set(logits[0].topk(3).indices.tolist())


@pytest.mark.parametrize(
    ("top_p", "allowed"),
    [(0.4, {0}), (0.7, {0, 1}), (0.85, {0, 1, 2}), (1.0, {0, 1, 2, 3})],
)
def test_top_p_keeps_smallest_nucleus(top_p: float, allowed: set[int]) -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None]
    tokens = draw_many(logits, SamplingParams(temperature=1.0, top_p=top_p), 20_000)
    assert set(tokens) == allowed
    nucleus = torch.tensor([probs[i] if i in allowed else 0.0 for i in range(4)])
    frequencies = torch.tensor([tokens.count(i) / len(tokens) for i in range(4)])
    assert torch.allclose(frequencies, nucleus / nucleus.sum(), atol=0.015)


def test_min_p_never_picks_below_threshold() -> None:
    logits = torch.randn(1, 40) * 2
    min_p = 0.15
    probs = torch.softmax(logits[0], dim=-1)
    allowed = {i for i, p in enumerate(probs.tolist()) if p >= min_p * probs.max().item()}
    assert 1 < len(allowed) < 40
    tokens = draw_many(logits, SamplingParams(temperature=1.0, min_p=min_p), 20_000)
    assert set(tokens) <= allowed
    # every allowed token with a fair share of the mass must show up
    renormalized = probs / sum(probs[i] for i in allowed)
    assert {i for i in allowed if renormalized[i] > 1e-3} <= set(tokens)


# --- penalties ---------------------------------------------------------------------------


def hf_repetition(logits: torch.Tensor, token_ids: list[int], penalty: float) -> torch.Tensor:
    processor = RepetitionPenaltyLogitsProcessor(penalty=penalty)
    return processor(torch.tensor([token_ids]), logits.clone()[None])[0]


def test_repetition_penalty_matches_transformers() -> None:
    logits = torch.randn(1, 30) * 3
    prompt, output = [0, 5, 5, 7, 29], [7, 12, 3]
    row = Row(SamplingParams(repetition_penalty=1.7), prompt, output)
    expected = hf_repetition(logits[0], prompt + output, 1.7)
    assert torch.allclose(apply_penalties(logits, [row])[0], expected)


def test_presence_and_frequency_by_hand() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0, 0.0]])
    row = Row(SamplingParams(presence_penalty=0.3, frequency_penalty=0.5), [0, 2], [1, 3, 3, 4])
    # OpenAI: logit - count * frequency - (count > 0) * presence, over output tokens only.
    expected = torch.tensor([2.0, -1.0 - 0.5 - 0.3, 0.5, 3.0 - 1.0 - 0.3, -2.0 - 0.5 - 0.3, 0.0])
    assert torch.allclose(apply_penalties(logits, [row])[0], expected)


def test_repetition_then_presence_frequency_in_a_mixed_batch() -> None:
    logits = torch.randn(3, 20) * 2
    prompt, output = [1, 2, 3], [3, 4, 4, 19]
    rows = [
        Row(SamplingParams(), prompt, output),
        Row(
            SamplingParams(repetition_penalty=1.2, presence_penalty=-0.5, frequency_penalty=0.25),
            prompt,
            output,
        ),
        Row(SamplingParams(frequency_penalty=1.0), [], [0, 0, 0]),
    ]
    out = apply_penalties(logits, rows)
    assert torch.equal(out[0], logits[0])

    counts = torch.bincount(torch.tensor(output), minlength=20).float()
    expected = hf_repetition(logits[1], prompt + output, 1.2) - 0.25 * counts + 0.5 * (counts > 0)
    assert torch.allclose(out[1], expected)

    expected = logits[2].clone()
    expected[0] -= 3.0
    assert torch.allclose(out[2], expected)


def test_greedy_uses_penalized_logits() -> None:
    logits = torch.tensor([[0.0, 5.0, 4.0, 1.0]])
    row = Row(SamplingParams(temperature=0.0, repetition_penalty=1.5), [1], [])
    assert sample(logits, [row])[0].token_id == 2  # 5 / 1.5 < 4


# --- logprobs ----------------------------------------------------------------------------


def test_logprobs_come_from_raw_logits() -> None:
    logits = torch.randn(4, 100).to(torch.bfloat16)
    rows = [
        Row(SamplingParams(temperature=0.0, logprobs=5, repetition_penalty=2.0), [3], [9]),
        Row(SamplingParams(temperature=0.6, top_k=20, logprobs=3, presence_penalty=1.0), [], [1]),
        Row(SamplingParams(temperature=1.0, logprobs=0)),
        Row(SamplingParams(temperature=1.0)),
    ]
    out = sample(logits, rows)
    reference = torch.log_softmax(logits.float(), dim=-1)
    for i, k in enumerate([5, 3, 0]):
        logprob = out[i].logprob
        assert logprob is not None
        assert logprob.token_id == out[i].token_id
        assert logprob.logprob == pytest.approx(reference[i, out[i].token_id].item(), abs=1e-5)
        assert list(logprob.top) == reference[i].topk(k).indices.tolist()
        values = list(logprob.top.values())
        assert values == sorted(values, reverse=True)
        assert values == pytest.approx(reference[i].topk(k).values.tolist(), abs=1e-5)
    assert out[3].logprob is None
