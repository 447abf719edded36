"""The Triton dequantizing matmul (tome/kernels/triton_quantized_matmul.py) on the kernels'
device (tests/conftest.py's KERNEL_DEVICE: Triton's interpreter on the CPU, compiled on a
GPU) against torch's float32 product by the expanded weight, for 4- and 8-bit blocks with
and without offsets, over batches and shapes that leave partial tiles; and the layer that
quantized_linear picks for CUDA."""

import pytest
import torch

pytest.importorskip("triton")

from tests.conftest import KERNEL_DEVICE
from tome.kernels.block_quantized_matmul import BlockQuantizedWeight, dequantize
from tome.kernels.triton_quantized_matmul import BLOCK_N, pack_for_triton, quantized_matmul
from tome.layers import quantized_linear as layers

# Neither n nor k fills whole tiles (BLOCK_N and BLOCK_K are 64): k is 3 or 5 blocks of 32.
SHAPES = [(100, 96), (72, 160)]
LAYOUTS = [(4, True), (4, False), (8, False), (8, True)]  # (bits, with offsets)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def random_weight(bits: int, offsets: bool, n: int, k: int) -> BlockQuantizedWeight:
    if bits == 4:
        codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    else:
        codes = torch.randint(-127, 128, (n, k), dtype=torch.int8).view(torch.uint8)
    scales = torch.rand(n, k // 32) * 0.02 + 0.001
    return BlockQuantizedWeight(
        bits, codes, scales, torch.randn(n, k // 32) * 0.1 if offsets else None
    )


def assert_matches_expanded(out: torch.Tensor, x: torch.Tensor, weight: BlockQuantizedWeight):
    """out equals x.float() @ dequantize(W).t() up to float32 accumulation in any order and,
    in 16-bit dtypes, the weight's rounding to x's dtype for tl.dot and the output's
    rounding: each at most 2^-9 of sum |x| |w| (the bound for a sum whose terms cancel)."""
    assert out.dtype == x.dtype
    w = dequantize(weight)
    expected = x.float() @ w.t()
    magnitude = x.float().abs() @ w.abs().t()
    bound = 2e-5 if x.dtype == torch.float32 else 2**-8
    error = (out.cpu().float() - expected).abs()
    assert (error <= bound * magnitude).all(), (error / magnitude).max()


@pytest.mark.parametrize(("bits", "offsets"), LAYOUTS)
@pytest.mark.parametrize("m", [1, 5, 33])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_equals_the_expanded_product(bits, offsets, m, dtype):
    torch.manual_seed(m + bits)
    for n, k in SHAPES:
        weight = random_weight(bits, offsets, n, k)
        packed = layers._to(pack_for_triton(weight), torch.device(KERNEL_DEVICE))
        x = torch.randn(m, k).to(dtype)
        assert_matches_expanded(quantized_matmul(x.to(KERNEL_DEVICE), packed), x, weight)


def test_four_bit_codes_pack_two_to_a_byte_low_nibble_first():
    weight = random_weight(4, True, 1, 32)
    weight.codes[0, :4] = torch.tensor([1, 2, 3, 15], dtype=torch.uint8)
    assert pack_for_triton(weight).codes[0, :2].tolist() == [0x21, 0xF3]


def test_the_layer_computes_x_times_w_plus_bias():
    torch.manual_seed(0)
    n, k = BLOCK_N + 8, 64
    weight = random_weight(4, True, n, k)
    bias = torch.randn(n)
    device = torch.device(KERNEL_DEVICE)
    layer = layers.TritonQuantizedLinear(weight, bias.to(device), device)
    x = torch.randn(2, 3, k)
    expected = x @ dequantize(weight).t() + bias
    torch.testing.assert_close(layer(x.to(device)).cpu(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("bits", "offsets"), LAYOUTS)
def test_cuda_takes_the_triton_layer(monkeypatch, bits, offsets):
    # The layer itself would move the weight to the GPU: a stand-in records the choice.
    class Chosen:
        def __init__(self, weight, bias, device) -> None:
            self.device = device

    monkeypatch.setattr(layers, "TritonQuantizedLinear", Chosen)
    weight = random_weight(bits, offsets, 64, 64)
    for dtype in DTYPES:
        chosen = layers.quantized_linear(weight, None, dtype, torch.device("cuda"))
        assert isinstance(chosen, Chosen)
    # The CPU keeps its own choices.
    on_cpu = layers.quantized_linear(weight, None, torch.float32, torch.device("cpu"))
    assert not isinstance(on_cpu, Chosen)
