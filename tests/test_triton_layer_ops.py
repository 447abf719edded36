"""The Triton RMSNorm (with its fused residual add), rotary embedding and SiLU-and-multiply
against transformers' own implementations of them, in float32 and bfloat16; in CI in
Triton's interpreter on the CPU, on a GPU compiled. Through them the engine's greedy
outputs equal transformers'. Also which kernels layer_kernels picks."""

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from tests.conftest import KERNEL_DEVICE, make_tiny_model
from tests.reference import load_reference, reference_greedy
from tome import LLM, SamplingParams
from tome.errors import InvalidRequestError
from tome.kernels import cpu_layer_ops, triton_layer_ops
from tome.layers.layer_kernels import LAYER_OPS_ENV, layer_kernels

ROWS = [1, 7]
DTYPES = [torch.float32, torch.bfloat16]


def assert_close(ours: torch.Tensor, expected: torch.Tensor) -> None:
    """float32: float rounding. bfloat16: results rounded where torch rounds them, so they
    differ by at most one unit in the last place where float32 sums are ordered
    differently (2**-7 relative)."""
    assert ours.dtype == expected.dtype
    tolerance = 2e-6 if ours.dtype == torch.float32 else 2**-7
    torch.testing.assert_close(ours, expected, rtol=tolerance, atol=1e-5)


def random(*shape, dtype, seed, scale=1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * scale).to(dtype).to(KERNEL_DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("dim", [16, 576, 1000])
def test_rms_norm_equals_transformers(dtype, rows, dim):
    reference = LlamaRMSNorm(dim, eps=1e-5).to(KERNEL_DEVICE, dtype)
    reference.weight.data.copy_(random(dim, dtype=dtype, seed=dim))
    x = random(rows, dim, dtype=dtype, seed=rows, scale=3.0)
    assert_close(triton_layer_ops.rms_norm(x, reference.weight.data, 1e-5), reference(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_with_the_residual_add_fused(dtype):
    """norm(x, residual) is transformers' `residual = residual + x; norm(residual)`, the
    sum left in `residual`."""
    reference = LlamaRMSNorm(576, eps=1e-6).to(KERNEL_DEVICE, dtype)
    reference.weight.data.copy_(random(576, dtype=dtype, seed=1))
    x = random(5, 576, dtype=dtype, seed=2)
    residual = random(5, 576, dtype=dtype, seed=3, scale=10.0)
    expected_sum = residual + x
    out = triton_layer_ops.rms_norm(x, reference.weight.data, 1e-6, residual)
    assert torch.equal(residual, expected_sum)
    assert_close(out, reference(expected_sum))


def test_rms_norm_of_strided_heads():
    """Per-head norms (Qwen3's q/k norm) take a view of the fused projection."""
    fused = random(5, 4 * 16 + 7, dtype=torch.float32, seed=4)
    heads = fused[:, :64].view(5, 4, 16)
    reference = LlamaRMSNorm(16, eps=1e-6).to(KERNEL_DEVICE)
    reference.weight.data.copy_(random(16, dtype=torch.float32, seed=5))
    assert_close(triton_layer_ops.rms_norm(heads, reference.weight.data, 1e-6), reference(heads))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", ROWS)
@pytest.mark.parametrize("head_dim", [16, 80, 128])
def test_rotary_in_place_equals_transformers(dtype, tokens, head_dim):
    """q and k rotated together as the model does: a view of the fused q/k/v rows."""
    heads, kv_heads = 6, 2
    qkv = random(tokens, (heads + 2 * kv_heads) * head_dim, dtype=dtype, seed=tokens)
    v_before = qkv[:, (heads + kv_heads) * head_dim :].clone()
    angles = random(tokens, head_dim // 2, dtype=torch.float32, seed=head_dim, scale=100.0)
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    # transformers' layout: [batch, heads, seq, head_dim], cos/sin [batch, seq, head_dim].
    expected_q, expected_k = apply_rotary_pos_emb(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None]
    )
    qk = qkv[:, : (heads + kv_heads) * head_dim].view(tokens, heads + kv_heads, head_dim)
    out = triton_layer_ops.rotate_in_place(qk, cos[:, None], sin[:, None])
    assert out.data_ptr() == qkv.data_ptr()
    assert_close(q, expected_q[0].transpose(0, 1))
    assert_close(k, expected_k[0].transpose(0, 1))
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim :], v_before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("width", [8, 1001, 2100])
def test_silu_and_mul_equals_torch(dtype, rows, width):
    gate_up = random(rows, 2 * width, dtype=dtype, seed=rows + width, scale=4.0)
    gate, up = gate_up.chunk(2, dim=-1)
    assert_close(triton_layer_ops.silu_and_mul(gate_up), F.silu(gate) * up)


def test_layer_kernels_follow_the_device_and_the_override(monkeypatch):
    cpu = torch.zeros(2, 4)
    monkeypatch.delenv(LAYER_OPS_ENV, raising=False)
    expected = cpu_layer_ops if cpu_layer_ops.kernel_library() is not None else None
    assert layer_kernels(cpu) is expected
    assert layer_kernels(cpu.bfloat16()) is None  # the C++ ops are float32 only
    monkeypatch.setenv(LAYER_OPS_ENV, "triton")
    assert layer_kernels(cpu) is triton_layer_ops
    monkeypatch.setenv(LAYER_OPS_ENV, "torch")
    assert layer_kernels(cpu) is None
    monkeypatch.setenv(LAYER_OPS_ENV, "fast")
    with pytest.raises(InvalidRequestError, match="TOME_LAYER_OPS must be one of"):
        layer_kernels(cpu)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_engine_with_triton_layer_ops_equals_transformers(
    arch, tmp_path, hf_tokenizer_dir, monkeypatch
):
    monkeypatch.setenv(LAYER_OPS_ENV, "triton")
    path = make_tiny_model(arch, tmp_path, hf_tokenizer_dir)
    llm = LLM(str(path), device=KERNEL_DEVICE, dtype="float32", kv_cache_memory=8 << 20)
    prompts = [[5, 9, 200, 3000, 17, 42, 7, 11, 300], [77, 88]]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    reference = load_reference(path)
    for prompt, out in zip(prompts, llm.generate(prompts, params), strict=True):
        assert out.token_ids == reference_greedy(reference, prompt, 6)[0]
