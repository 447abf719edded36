"""GGUF weights kept in their quantized blocks: the repacked blocks expand to exactly what
the gguf package's own dequantizer gives, the C++ kernel's products equal float64 products
with those weights (of float32 activations, or of activations rounded to 8 bits as
round_to_int8_blocks rounds them, the same bytes on every instruction set), and a model
loads its layers in blocks where a whole layer came in one layout (the embedded model's
greedy output against transformers is in test_embedded_model.py)."""

import gguf
import numpy as np
import pytest
import torch
from torch import nn

from tests.gguf_files import tiny_model, write_gguf
from tome.kernels.block_quantized_matmul import (
    EXPAND_FROM_ROWS,
    BlockQuantizedWeight,
    block_quantized_matmul,
    dequantize_transposed,
    gather_rows,
    grouped_block_quantized_matmul,
    kernel_library,
    pack,
    round_to_int8_blocks,
)
from tome.kernels.cpu_isa import ISA_ENV, runnable
from tome.kernels.cpu_kernels import forget_loaded
from tome.layers.block_quantized_linear import (
    BlockQuantizedEmbedding,
    BlockQuantizedLinear,
    StackedBlockQuantizedLinear,
)
from tome.loader import ModelSource, iter_weights
from tome.loader.gguf_blocks import repack
from tome.models.config import ModelConfig
from tome.models.registry import model_class

QUANTS = gguf.GGMLQuantizationType
QUANTIZED_BY_GGUF = [QUANTS.Q4_0, QUANTS.Q4_1, QUANTS.Q8_0]

pytestmark = pytest.mark.skipif(kernel_library() is None, reason="no C++ compiler here")


def _raw(qtype: QUANTS, rows: int, cols: int, seed: int) -> np.ndarray:
    """A tensor's bytes as a GGUF file stores them."""
    rng = np.random.default_rng(seed)
    if qtype in QUANTIZED_BY_GGUF:
        weights = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
        return gguf.quants.quantize(weights, qtype)
    # gguf cannot quantize to Q4_K; any bytes are a valid block once its two float16
    # factors are finite, so random ones with small factors stand in.
    blocks = rng.integers(0, 256, (rows * cols // 256, 144), dtype=np.uint8)
    factors = (rng.random((blocks.shape[0], 2)) * 0.01).astype(np.float16)
    blocks[:, :4] = factors.view(np.uint8)
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("qtype", [*QUANTIZED_BY_GGUF, QUANTS.Q4_K])
@pytest.mark.parametrize(("rows", "cols"), [(1, 256), (13, 512), (70, 768)])
@pytest.mark.usefixtures("each_cpu_isa")
def test_repacked_blocks_expand_to_gguf_dequantization(qtype, rows, cols):
    raw = _raw(qtype, rows, cols, seed=rows)
    expected = torch.from_numpy(gguf.quants.dequantize(raw, qtype))
    weight = repack(raw, qtype)
    assert weight.shape == (rows, cols)
    packed = pack(weight)
    assert torch.equal(dequantize_transposed(packed), expected.t())
    index = torch.tensor([rows - 1, 0, rows // 2])
    assert torch.equal(gather_rows(packed, index), expected[index])


@pytest.mark.parametrize("qtype", [QUANTS.Q4_1, QUANTS.Q8_0, QUANTS.Q4_K])
# Rows cover the kernel's 4-, 2- and 1-row tiles and the expand-then-BLAS path; 67 and
# 9 output columns leave partial column tiles on both threads.
@pytest.mark.parametrize("m", [1, 2, 3, 4, 7, 9, EXPAND_FROM_ROWS - 1, EXPAND_FROM_ROWS + 5])
@pytest.mark.parametrize("n", [9, 67])
@pytest.mark.usefixtures("each_cpu_isa")
def test_matmul_equals_float64_product(qtype, m, n):
    raw = _raw(qtype, n, 512, seed=m * n)
    reference = torch.from_numpy(gguf.quants.dequantize(raw, qtype)).double()
    x = torch.randn(m, 512, generator=torch.Generator().manual_seed(m))
    ours = block_quantized_matmul(x, pack(repack(raw, qtype)))
    assert ours.dtype == torch.float32 and ours.shape == (m, n)
    # A float32 dot product's error is bounded by a multiple of the sum of its terms'
    # magnitudes; 1e-5 of it is about 1/20 of the worst case over 512 terms.
    bound = 1e-5 * (x.double().abs() @ reference.abs().t())
    assert ((ours.double() - x.double() @ reference.t()).abs() <= bound).all()


def test_matmul_keeps_leading_dimensions():
    weight = pack(repack(_raw(QUANTS.Q4_0, 5, 64, seed=0), QUANTS.Q4_0))
    x = torch.randn(2, 3, 64)
    torch.testing.assert_close(
        block_quantized_matmul(x, weight), x @ dequantize_transposed(weight), rtol=1e-5, atol=1e-5
    )


def _load(path, config: ModelConfig) -> nn.Module:
    """As the engine loads: the model built on the meta device, each float parameter
    allocated as its tensor arrives."""
    with torch.device("meta"):
        model = model_class(config)(config)
    weights = iter_weights(ModelSource("gguf", path), config, keep_blocks=True)
    model.load_weights(weights, torch.device("cpu"))
    assert not any(t.is_meta for t in model.parameters())
    return model


def _float_weights(path, config: ModelConfig) -> dict[str, torch.Tensor]:
    return dict(iter_weights(ModelSource("gguf", path), config))


def _weight_of(module: nn.Module) -> torch.Tensor:
    if isinstance(module, BlockQuantizedLinear | BlockQuantizedEmbedding):
        return dequantize_transposed(module.weight).t()
    if isinstance(module, StackedBlockQuantizedLinear):
        return torch.cat([dequantize_transposed(part).t() for part in module.parts])
    return module.weight.detach()


def test_llama_layers_keep_their_blocks(tmp_path):
    """q and v in Q4_0 but k in Q8_0: the fused q/k/v projection keeps each run of one
    layout in its blocks, side by side; every other layer keeps its blocks, the tied head
    shares the embedding's. Each layer's weight, rotary rows of q/k put back in HF order,
    equals the float loader's, and only the norms take float memory."""
    hf_model = tiny_model("llama", tied=True, attention_bias=False)
    qtypes = {"attn_k": "Q8_0", "token_embd": "Q8_0", "attn_output": "Q4_1", "ffn_down": "Q4_1"}
    path = write_gguf(
        hf_model,
        "llama",
        tmp_path / "mixed.gguf",
        lambda name: next((q for part, q in qtypes.items() if part in name), "Q4_0"),
    )
    config = ModelConfig.from_hf(hf_model.config)
    model, floats = _load(path, config), _float_weights(path, config)
    layer = model.model.layers[1]
    assert isinstance(layer.self_attn.qkv_proj, StackedBlockQuantizedLinear)
    assert [part.bits for part in layer.self_attn.qkv_proj.parts] == [4, 8, 4]
    x = torch.randn(3, config.hidden_size)
    qkv = layer.self_attn.qkv_proj
    torch.testing.assert_close(qkv(x), x @ _weight_of(qkv).t(), rtol=1e-5, atol=1e-5)
    qkv.int8_activations = True  # then it multiplies x rounded to 8 bits per block
    rounded = round_to_int8_blocks(x)
    torch.testing.assert_close(qkv(x), rounded @ _weight_of(qkv).t(), rtol=1e-5, atol=1e-5)
    for module in (layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj):
        assert isinstance(module, BlockQuantizedLinear)
    assert isinstance(model.model.embed_tokens, BlockQuantizedEmbedding)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    in_float = [n for n in floats if "norm" in n]
    assert sum(t.numel() for t in model.parameters()) == sum(floats[n].numel() for n in in_float)
    prefix = "model.layers.1."
    parts = {
        "self_attn.qkv_proj": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        "self_attn.o_proj": ["self_attn.o_proj"],
        "mlp.gate_up_proj": ["mlp.gate_proj", "mlp.up_proj"],
        "mlp.down_proj": ["mlp.down_proj"],
    }
    for fused, originals in parts.items():
        expected = torch.cat([floats[f"{prefix}{name}.weight"] for name in originals])
        assert torch.equal(_weight_of(layer.get_submodule(fused)), expected), fused
    assert torch.equal(_weight_of(model.lm_head), floats["model.embed_tokens.weight"])


def test_float_gguf_built_on_meta_keeps_its_tied_head(tmp_path):
    hf_model = tiny_model("llama", tied=True, attention_bias=False)
    path = write_gguf(hf_model, "llama", tmp_path / "f32.gguf")
    config = ModelConfig.from_hf(hf_model.config)
    model, floats = _load(path, config), _float_weights(path, config)
    assert type(model.lm_head) is nn.Linear
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, floats["model.embed_tokens.weight"])


def test_qwen2_projection_in_blocks_adds_its_bias(tmp_path):
    hf_model = tiny_model("qwen2", tied=False)
    path = write_gguf(hf_model, "qwen2", tmp_path / "q41.gguf", lambda name: "Q4_1")
    config = ModelConfig.from_hf(hf_model.config)
    model, floats = _load(path, config), _float_weights(path, config)
    qkv = model.model.layers[0].self_attn.qkv_proj
    assert isinstance(qkv, BlockQuantizedLinear) and isinstance(model.lm_head, BlockQuantizedLinear)
    names = [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
    weight = torch.cat([floats[f"{name}.weight"] for name in names])
    bias = torch.cat([floats[f"{name}.bias"] for name in names])
    x = torch.randn(3, config.hidden_size)
    torch.testing.assert_close(qkv(x), x @ weight.t() + bias, rtol=1e-5, atol=1e-5)
    ids = torch.tensor([[0, 5], [127, 5]])
    assert torch.equal(model.model.embed_tokens(ids), floats["model.embed_tokens.weight"][ids])


@pytest.mark.usefixtures("each_cpu_isa")
def test_q6_k_is_kept_as_8_bit_blocks_within_half_a_step():
    # gguf cannot quantize to Q6_K: random bytes with a small super-block scale stand in
    # (its 6-bit codes and int8 sub-block scales are valid whatever their bits).
    rng = np.random.default_rng(6)
    blocks = rng.integers(0, 256, (12 * 512 // 256, 210), dtype=np.uint8)
    blocks[:, 208:] = (rng.random((blocks.shape[0], 1)) * 0.01).astype(np.float16).view(np.uint8)
    raw = blocks.reshape(12, -1)
    exact = torch.from_numpy(gguf.quants.dequantize(raw, QUANTS.Q6_K))
    weight = repack(raw, QUANTS.Q6_K)
    assert weight.bits == 8 and weight.shape == (12, 512)
    ours = dequantize_transposed(pack(weight)).t()
    half_step = exact.view(12, -1, 32).abs().amax(-1, keepdim=True) / 254
    # Exact ties (Q6_K values are rational multiples of each other) land on half a step.
    assert ((ours - exact).view(12, -1, 32).abs() <= half_step * (1 + 1e-5)).all()
    assert not torch.equal(ours, exact)  # re-quantized, not Q6_K's own codes


@pytest.mark.parametrize("qtype", [QUANTS.Q4_K, QUANTS.Q8_0])
@pytest.mark.parametrize("int8_activations", [False, True])
@pytest.mark.usefixtures("each_cpu_isa")
def test_grouped_matmul_equals_each_product_alone(qtype, int8_activations):
    """A MoE layer's experts in one call: every group's rows give what the single-weight
    kernel gives them, bit for bit, whether a group is one row, several, none, or enough
    rows to take the BLAS path."""
    weights = [pack(repack(_raw(qtype, 40, 256, seed=g), qtype)) for g in range(5)]
    counts = [1, 0, 7, EXPAND_FROM_ROWS, 3]
    x = torch.randn(sum(counts), 256, generator=torch.Generator().manual_seed(5))
    out = grouped_block_quantized_matmul(x, counts, weights, int8_activations)
    start = 0
    for count, weight in zip(counts, weights, strict=True):
        alone = block_quantized_matmul(x[start : start + count], weight, int8_activations)
        assert torch.equal(out[start : start + count], alone)
        start += count


def test_activations_round_to_8_bits_per_block_of_32():
    """Each block of 32 becomes amax / 127 times whole numbers in [-127, 127], the block's
    largest value kept exactly; an all-zero block stays zero."""
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(0))
    x[1, 32:64] = 0
    rounded = round_to_int8_blocks(x).view(3, 3, 32)
    amax = x.view(3, 3, 32).abs().amax(-1, keepdim=True)
    steps = torch.where(amax > 0, rounded / (amax / 127), 0)
    assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= 127.001
    assert ((rounded - x.view(3, 3, 32)).abs() <= amax / 254 * (1 + 1e-5)).all()
    assert torch.equal(rounded.abs().amax(-1, keepdim=True), amax)
    assert not rounded[1, 1].any()


@pytest.mark.parametrize("qtype", [QUANTS.Q4_1, QUANTS.Q8_0, QUANTS.Q4_K])
@pytest.mark.parametrize("m", [1, 3, 9, EXPAND_FROM_ROWS + 5])
@pytest.mark.usefixtures("each_cpu_isa")
def test_int8_activations_equal_the_float64_product_of_rounded_rows(qtype, m):
    """With 8-bit activations the kernel (and, for long prefill chunks, BLAS) computes the
    product of the weights with x as round_to_int8_blocks rounds it: exact integer dot
    products per block, float rounding only in scaling and summing the blocks."""
    raw = _raw(qtype, 67, 512, seed=m)
    reference = torch.from_numpy(gguf.quants.dequantize(raw, qtype)).double()
    x = torch.randn(m, 512, generator=torch.Generator().manual_seed(m))
    ours = block_quantized_matmul(x, pack(repack(raw, qtype)), int8_activations=True)
    rounded = round_to_int8_blocks(x).double()
    bound = 1e-5 * (rounded.abs() @ reference.abs().t())
    assert ((ours.double() - rounded @ reference.t()).abs() <= bound).all()


def test_int8_activations_give_the_same_bytes_on_every_instruction_set(monkeypatch):
    """Integer sums are exact, and the float steps after them are the same operations in
    the same order, so AVX2, AVX-512 and VNNI builds agree bit for bit. 8-bit codes span
    all 256 values (-128 included, which a build without VNNI multiplies nibble by
    nibble); rows cover the 8-, 4-, 2- and 1-row tiles."""
    generator = torch.Generator().manual_seed(3)
    weights = [
        BlockQuantizedWeight(
            bits,
            torch.randint(0, 16 if bits == 4 else 256, (40, 320), dtype=torch.uint8),
            torch.rand(40, 10, generator=generator),
            torch.randn(40, 10, generator=generator) if bits == 4 else None,
        )
        for bits in (4, 8)
    ]
    x = torch.randn(15, 320, generator=generator) * 3
    results = {}
    for isa in runnable():
        monkeypatch.setenv(ISA_ENV, isa.name)
        forget_loaded()
        results[isa.name] = [block_quantized_matmul(x, pack(w), True) for w in weights]
    forget_loaded()  # later tests load the variant their environment names
    first = next(iter(results.values()))
    for name, outputs in results.items():
        assert all(map(torch.equal, outputs, first)), name
