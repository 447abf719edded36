"""The bfloat16 decode product (kernels/bfloat16_matmul.py) against the float64 product of
the same values, on every instruction set; and a bfloat16 model on the CPU, whose decode
steps run it, against transformers in bfloat16."""

import pytest
import torch

from tests.reference import load_reference, reference_greedy
from tome import LLM, SamplingParams
from tome.kernels import bfloat16_matmul
from tome.layers.bfloat16_linear import Bfloat16Linear

pytestmark = pytest.mark.skipif(
    bfloat16_matmul.kernel_library() is None, reason="the C++ kernel needs a compiler"
)


@pytest.mark.usefixtures("each_cpu_isa")
@pytest.mark.parametrize(
    ("m", "k", "n"), [(1, 576, 960), (3, 1536, 64), (8, 100, 33), (32, 64, 17)]
)
def test_the_product_is_the_exact_one_rounded_once(m, k, n):
    generator = torch.Generator().manual_seed(m * k + n)
    x = torch.randn(m, k, generator=generator).bfloat16()
    w = torch.randn(n, k, generator=generator).bfloat16()
    ours = bfloat16_matmul.bfloat16_matmul(x, w)
    exact = x.double() @ w.double().T
    # float32 sums of k products, then one rounding to bfloat16 (8 bits of mantissa).
    bound = exact.abs() * 2.0**-8 + (x.double().abs() @ w.double().abs().T) * k * 2.0**-24
    assert ours.dtype == torch.bfloat16 and ours.shape == (m, n)
    assert ((ours.double() - exact).abs() <= bound).all()
    torch.testing.assert_close(ours, torch.nn.functional.linear(x, w), rtol=2**-7, atol=1e-6)


def test_a_bfloat16_model_on_the_cpu_decodes_as_transformers_does(tiny_llama):
    llm = LLM(str(tiny_llama), dtype="bfloat16", enable_prefix_caching=False)
    model = llm.engine.runner.model
    assert any(isinstance(module, Bfloat16Linear) for module in model.modules())
    prompt = list(range(5, 45))
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    ours = llm.generate(prompt, params)[0].token_ids
    reference = load_reference(tiny_llama, dtype=torch.bfloat16)
    assert ours == reference_greedy(reference, prompt, 8)[0]
