"""The C++ KDA decode step (tome/kernels/cpu/kda_step.cpp) against kda_ops'
recurrent_kda_step, which test_kimi_linear.py holds equal to transformers, once per
instruction set: outputs, and the state pool updated in place at the sequences' slots and
nowhere else. The engine's outputs through it are compared with transformers' in
test_kimi_linear.py."""

import pytest
import torch

from tome.kernels import cpu_kda_step
from tome.layers.kda_ops import recurrent_kda_step

pytestmark = [
    pytest.mark.skipif(cpu_kda_step.kernel_library() is None, reason="no C++ compiler here"),
    pytest.mark.usefixtures("each_cpu_isa"),
]


# One sequence runs on the calling thread, five in the parallel loop; 128 x 128 heads are
# Kimi Linear's, 16 x 24 a tiny model's (and 24 is no multiple of a vector's width).
@pytest.mark.parametrize("seqs", [1, 5])
@pytest.mark.parametrize("k_dim, v_dim", [(16, 24), (128, 128)])
def test_the_step_in_place_equals_the_torch_step(seqs, k_dim, v_dim):
    generator = torch.Generator().manual_seed(seqs + k_dim)
    heads = 3
    # q, k and v as views of one fused row each, as the layer passes them.
    fused = torch.randn(seqs, 3, heads, max(k_dim, v_dim), generator=generator)
    q, k, v = fused[:, 0, :, :k_dim], fused[:, 1, :, :k_dim], fused[:, 2, :, :v_dim]
    g = -torch.rand(seqs, heads, k_dim, generator=generator) * 3
    beta = torch.rand(seqs, heads, generator=generator)
    pool = torch.randn(2 * seqs + 1, heads, k_dim, v_dim, generator=generator)
    slots = torch.randperm(2 * seqs + 1, generator=generator)[:seqs]
    expected_pool = pool.clone()
    states = expected_pool[slots]
    expected = recurrent_kda_step(q, k, v, g, beta, states)
    expected_pool[slots] = states
    out = cpu_kda_step.kda_step_in_place(q, k, v, g, beta, pool, slots)
    # The kernel reads the state for q and k before it writes it (kda_step.cpp): the same
    # sums in another order.
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pool, expected_pool, atol=1e-5, rtol=1e-5)
