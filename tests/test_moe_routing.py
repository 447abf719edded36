"""DeepSeek's routers against transformers' own modules (DeepseekV2TopkRouter,
DeepseekV3TopkRouter) on the same weights and hidden states: the same experts and weights
per token, for V2's greedy and group-limited top-k and V3's biased, group-limited choice
with and without renormalisation."""

import pytest
import torch
import transformers
from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2TopkRouter
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

from tome.layers.moe_routing import deepseek_v2_top_k, deepseek_v3_top_k

TOKENS, HIDDEN, EXPERTS = 37, 32, 16


def by_expert(weights: torch.Tensor, ids: torch.Tensor):
    """Each token's (ids, weights) sorted by expert id: top-k here is unsorted."""
    order = ids.argsort(dim=-1)
    return ids.gather(1, order), weights.gather(1, order)


def assert_same_routing(ours, theirs) -> None:
    our_ids, our_weights = by_expert(*ours)
    their_ids, their_weights = by_expert(*theirs)
    assert torch.equal(our_ids, their_ids)
    torch.testing.assert_close(our_weights, their_weights, rtol=1e-6, atol=1e-7)


def hidden_and_router(router) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(EXPERTS)
    with torch.no_grad():
        router.weight.normal_(0, 0.5, generator=generator)
    return torch.randn(TOKENS, HIDDEN, generator=generator), router.weight


@pytest.mark.parametrize("method", ["greedy", "group_limited_greedy"])
def test_v2_routing_equals_transformers(method):
    config = transformers.DeepseekV2Config(
        hidden_size=HIDDEN,
        n_routed_experts=EXPERTS,
        num_experts_per_tok=3,
        topk_method=method,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=1.7,
    )
    router = DeepseekV2TopkRouter(config)
    x, weight = hidden_and_router(router)
    _, their_weights, their_ids = router(x)
    logits = x.float() @ weight.float().T
    ours = deepseek_v2_top_k(logits, 3, method, 4, 2, 1.7)
    assert_same_routing(ours, (their_weights, their_ids))


@pytest.mark.parametrize("renormalize", [True, False])
def test_v3_routing_equals_transformers(renormalize):
    config = transformers.DeepseekV3Config(
        hidden_size=HIDDEN,
        n_routed_experts=EXPERTS,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        norm_topk_prob=renormalize,
        routed_scaling_factor=2.5,
    )
    router = DeepseekV3TopkRouter(config)
    x, weight = hidden_and_router(router)
    bias = torch.linspace(-0.3, 0.3, EXPERTS)  # large enough to change choices
    router.e_score_correction_bias.copy_(bias)
    _, their_weights, their_ids = router(x)
    logits = x.float() @ weight.float().T
    ours = deepseek_v3_top_k(logits, bias, 4, 4, 2, renormalize, 2.5)
    assert_same_routing(ours, (their_weights, their_ids))
    # The bias steers the choice: without it some token picks other experts.
    unbiased = deepseek_v3_top_k(logits, torch.zeros(EXPERTS), 4, 4, 2, renormalize, 2.5)
    assert not torch.equal(by_expert(*unbiased)[0], by_expert(*ours)[0])


def test_an_unknown_v2_method_is_refused():
    with pytest.raises(ValueError, match="neither greedy"):
        deepseek_v2_top_k(torch.zeros(1, EXPERTS), 2, "random", 4, 2, 1.0)
