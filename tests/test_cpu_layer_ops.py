"""The C++ RMSNorm, rotary embedding and SiLU-and-multiply against transformers' own
implementations of them (the engine's outputs through them are compared with
transformers' in test_engine_equality.py)."""

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from tome.kernels import cpu_layer_ops

pytestmark = [
    pytest.mark.skipif(cpu_layer_ops.kernel_library() is None, reason="no C++ compiler here"),
    pytest.mark.usefixtures("each_cpu_isa"),
]

# 1 and 3 rows run on the calling thread, 200 in the parallel loop.
ROWS = [1, 3, 200]


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("dim", [16, 576, 1000])
def test_rms_norm_equals_transformers(rows, dim):
    torch.manual_seed(rows + dim)
    reference = LlamaRMSNorm(dim, eps=1e-5)
    reference.weight.data.normal_()
    x = torch.randn(rows, dim) * 3
    ours = cpu_layer_ops.rms_norm(x, reference.weight.data, 1e-5)
    # Only the order of the sum of squares differs.
    torch.testing.assert_close(ours, reference(x), rtol=2e-6, atol=1e-6)


def test_rms_norm_with_the_residual_add():
    """norm(x, residual) normalizes residual + x and leaves the sum in `residual`."""
    torch.manual_seed(0)
    reference = LlamaRMSNorm(576, eps=1e-6)
    reference.weight.data.normal_()
    x, residual = torch.randn(5, 576), torch.randn(5, 576) * 10
    expected_sum = residual + x
    out = cpu_layer_ops.rms_norm(x, reference.weight.data, 1e-6, residual)
    assert torch.equal(residual, expected_sum)
    torch.testing.assert_close(out, reference(expected_sum), rtol=2e-6, atol=1e-6)


def test_rms_norm_of_strided_heads():
    """Per-head norms (Qwen3's q/k norm) take a view of the fused projection."""
    fused = torch.randn(5, 4 * 16 + 7)
    heads = fused[:, :64].view(5, 4, 16)
    weight = torch.randn(16)
    reference = LlamaRMSNorm(16, eps=1e-6)
    reference.weight.data.copy_(weight)
    torch.testing.assert_close(
        cpu_layer_ops.rms_norm(heads, weight, 1e-6), reference(heads), rtol=2e-6, atol=1e-6
    )


@pytest.mark.parametrize("tokens", ROWS)
@pytest.mark.parametrize("head_dim", [16, 64, 128])
def test_rotary_in_place_equals_transformers(tokens, head_dim):
    """q and k rotated together as the model does: a view of the fused q/k/v rows."""
    torch.manual_seed(tokens + head_dim)
    heads, kv_heads = 6, 2
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim)
    v_before = qkv[:, (heads + kv_heads) * head_dim :].clone()
    angles = torch.rand(tokens, head_dim // 2) * 100
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos(), angles.sin()
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    # transformers' layout: [batch, heads, seq, head_dim], cos/sin [batch, seq, head_dim].
    expected_q, expected_k = apply_rotary_pos_emb(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None]
    )
    qk = qkv[:, : (heads + kv_heads) * head_dim].view(tokens, heads + kv_heads, head_dim)
    out = cpu_layer_ops.rotate_in_place(qk, cos[:, None], sin[:, None])
    assert out.data_ptr() == qkv.data_ptr()
    # Same operations in the same order: equal to the bit.
    assert torch.equal(q, expected_q[0].transpose(0, 1))
    assert torch.equal(k, expected_k[0].transpose(0, 1))
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim :], v_before)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("width", [8, 1536, 1001])
def test_silu_and_mul_equals_torch(rows, width):
    torch.manual_seed(rows + width)
    gate_up = torch.randn(rows, 2 * width) * 4
    gate, up = gate_up.chunk(2, dim=-1)
    # glibc's vector expf against torch's: a few units in the last place.
    torch.testing.assert_close(
        cpu_layer_ops.silu_and_mul(gate_up), F.silu(gate) * up, rtol=1e-6, atol=1e-6
    )
