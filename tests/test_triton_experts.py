"""The grouped expert kernel (tome/kernels/triton_experts.py) on the kernels' device
(tests/conftest.py's KERNEL_DEVICE: Triton's interpreter on the CPU, compiled on a GPU):
against the torch loop over experts, with some experts idle and one given several blocks
of rows, and in the engine against transformers."""

import pytest
import torch

from tests.conftest import KERNEL_DEVICE
from tests.reference import load_reference
from tests.test_engine_equality import assert_matches_reference, greedy_params, random_prompts
from tests.test_kernels import engine
from tests.test_moe_models import save_tiny_moe
from tome.layers.layer_kernels import LAYER_OPS_ENV
from tome.layers.moe import FusedExperts, softmax_top_k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_experts_equal_the_torch_loop(monkeypatch, dtype):
    torch.manual_seed(2)
    experts = FusedExperts(num_experts=6, hidden_size=48, intermediate_size=40)
    torch.nn.init.normal_(experts.gate_up_proj, std=0.2)
    torch.nn.init.normal_(experts.down_proj, std=0.2)
    experts = experts.to(KERNEL_DEVICE, dtype)
    x = torch.randn(37, 48).to(KERNEL_DEVICE, dtype)
    logits = torch.randn(37, 6)
    logits[:, 2] += 3  # expert 2 takes most tokens: several blocks of rows
    logits[:, 5] -= 9  # expert 5 takes none
    weights, ids = (t.to(KERNEL_DEVICE) for t in softmax_top_k(logits, 2, renormalize=True))
    monkeypatch.setenv(LAYER_OPS_ENV, "torch")
    expected = experts(x, weights, ids)
    monkeypatch.setenv(LAYER_OPS_ENV, "triton")
    # In bfloat16 the torch loop rounds each expert's weighted output and adds in
    # bfloat16; the kernel adds a token's experts in float32 and rounds once.
    tolerance = (
        {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 0.016, "atol": 0.01}
    )
    torch.testing.assert_close(experts(x, weights, ids), expected, **tolerance)


def test_the_engine_with_grouped_experts_equals_transformers(
    tmp_path, hf_tokenizer_dir, monkeypatch
):
    save_tiny_moe("qwen2_moe_shared", tmp_path, hf_tokenizer_dir)
    monkeypatch.setenv(LAYER_OPS_ENV, "triton")
    llm = engine(tmp_path)
    prompts = random_prompts([4, 37], seed=5)
    assert_matches_reference(
        load_reference(tmp_path), prompts, llm.generate(prompts, greedy_params())
    )
