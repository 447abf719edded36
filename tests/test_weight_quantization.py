"""Quantizing weights as a model loads (`quantization=`): each scheme's codes against an
independent definition (torch's own quantizers, the OCP MX rules worked by hand), every
layer the loader may choose against a float product with the same weights, and whole
models against transformers running the same quantized weights."""

import pytest
import torch

from tests.conftest import make_tiny_model
from tests.reference import load_reference, reference_greedy
from tests.test_moe_models import save_tiny_moe
from tome import LLM, SamplingParams
from tome.engine.config import EngineConfig
from tome.errors import InvalidRequestError
from tome.kernels import block_quantized_matmul
from tome.kernels.block_quantized_matmul import BlockQuantizedWeight, dequantize
from tome.kernels.float8_matmul import Float8Weight, dequantize_float8
from tome.layers import quantized_linear as layers
from tome.layers.block_quantized_experts import BlockQuantizedExperts
from tome.layers.quantized_experts import QuantizedExperts
from tome.layers.weight_quantization import (
    WEIGHT_QUANTIZATIONS,
    quantize_fp8,
    quantize_int4,
    quantize_int8,
    quantize_mxfp4,
    round_to_e2m1,
)

CPU = torch.device("cpu")


def expanded(weight: BlockQuantizedWeight | Float8Weight) -> torch.Tensor:
    if isinstance(weight, Float8Weight):
        return dequantize_float8(weight, torch.float32)
    return dequantize(weight)


def random_weight(n: int = 96, k: int = 256, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=generator)
    w[3] = 0  # an all-zero row must not divide by zero
    return w


def test_int8_codes_are_torchs_per_channel_quantization():
    w = random_weight()
    ours = quantize_int8(w)
    scales = ours.scales[:, 0].double()
    theirs = torch.quantize_per_channel(
        w, scales, torch.zeros(len(scales), dtype=torch.long), 0, torch.qint8
    )
    assert torch.equal(ours.codes.view(torch.int8), theirs.int_repr())
    assert torch.equal(expanded(ours), theirs.dequantize())


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_groups_hold_weights_on_a_4_bit_grid_exactly(group_size):
    # Weights that are already min + step * q (q in 0..15, both ends used in every group,
    # as in a Q4_1 file) quantize without loss; any weight moves by at most half a step.
    generator = torch.Generator().manual_seed(group_size)
    n, k = 64, 256
    groups = k // group_size
    codes = torch.randint(0, 16, (n, groups, group_size), generator=generator)
    codes[..., 0], codes[..., 1] = 0, 15
    step = torch.rand(n, groups, 1, generator=generator) * 0.1 + 0.01
    low = torch.randn(n, groups, 1, generator=generator)
    on_grid = (low + step * codes).reshape(n, k)
    ours = quantize_int4(on_grid, group_size)
    assert torch.equal(ours.codes.reshape(n, groups, group_size), codes.to(torch.uint8))
    torch.testing.assert_close(expanded(ours), on_grid, rtol=0, atol=1e-6)
    w = random_weight()
    rounded = quantize_int4(w, group_size)
    half_step = rounded.scales.repeat_interleave(32, dim=1) / 2
    assert ((expanded(rounded) - w).abs() <= half_step * (1 + 1e-5)).all()


def test_e2m1_rounds_to_nearest_ties_to_even_and_saturates():
    # e2m1 holds 0, 0.5, 1, 1.5, 2, 3, 4, 6. Ties go to the even mantissa: 0.25 -> 0 (not
    # 0.5), 0.75 -> 1 (mantissa 0, not 0.5's 1), 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4,
    # 5 -> 4 (4 = 1.0 x 2^2 against 6 = 1.5 x 2^2); beyond 6 saturates (OCP MX v1.0, 5.3.3).
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.1, 7.0, 1e9, -0.3, -1.6])
    expected = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 6.0, -0.5, -1.5])
    assert torch.equal(round_to_e2m1(x), expected)


def test_mxfp4_block_scale_and_values_follow_the_ocp_rules():
    # One block of 32 with max abs 5: shared exponent floor(log2 5) - 2 = 0, so X = 1 and
    # the values are e2m1(v); a block with max abs 0.75: floor(log2 0.75) - 2 = -3, X = 1/8,
    # v / X = 6 for 0.75 and 0.8 for 0.1 -> 1 (0.8 is nearer 1 than 0.5) -> 0.125.
    w = torch.zeros(2, 32)
    w[0, :4] = torch.tensor([5.0, -2.6, 0.3, 1.2])
    w[1, :2] = torch.tensor([0.75, 0.1])
    ours = quantize_mxfp4(w)
    assert expanded(ours)[0, :4].tolist() == [4.0, -3.0, 0.5, 1.0]
    assert expanded(ours)[1, :2].tolist() == [0.75, 0.125]
    # Held exactly as 8-bit codes: twice an e2m1 value under half the block's scale.
    assert ours.scales.tolist() == [[0.5], [1 / 16]]


def test_fp8_per_channel_and_per_block_scales():
    w = random_weight(200, 300)
    per_row = quantize_fp8(w, None)
    assert torch.equal(
        per_row.scales[:, 0], w.abs().amax(dim=1).masked_fill(w.abs().amax(1) == 0, 448) / 448
    )
    blocks = quantize_fp8(w, 128)
    # Rows 0-127 share one scale per 128 columns, rows 128-199 another: each the max abs
    # of its tile over 448.
    tile = w[128:, 256:]
    assert blocks.scales[150, 2] == tile.abs().max() / 448
    for weight in (per_row, blocks):
        theirs = (w / expanded_scales(weight)).to(torch.float8_e4m3fn).float() * expanded_scales(
            weight
        )
        assert torch.equal(expanded(weight), theirs)


def expanded_scales(weight: Float8Weight) -> torch.Tensor:
    k = weight.shape[1]
    return weight.scales.repeat_interleave(weight.block_k, dim=1)[:, :k]


LAYER_KINDS = [
    (torch.float32, "block kernel", layers.BlockQuantizedLinear),
    (torch.bfloat16, "torch packed", (layers.Int4PackedLinear, layers.Int8PackedLinear)),
    (torch.float32, "dequantizing", layers.DequantizingLinear),
]


@pytest.mark.parametrize("scheme", list(WEIGHT_QUANTIZATIONS))
@pytest.mark.parametrize(("dtype", "kind", "expected_class"), LAYER_KINDS)
def test_each_layer_computes_its_weights_product(scheme, dtype, kind, expected_class, monkeypatch):
    if kind == "dequantizing":  # a CPU without the block kernel
        monkeypatch.setattr(layers, "kernel_library", lambda: None)
    elif kind == "block kernel" and block_quantized_matmul.kernel_library() is None:
        pytest.skip("the block kernel needs a C++ compiler")
    weight = WEIGHT_QUANTIZATIONS[scheme].quantize(random_weight())
    bias = torch.randn(96).to(dtype)
    layer = layers.quantized_linear(weight, bias, dtype, CPU)
    if isinstance(weight, Float8Weight):
        expected_class = layers.Float8Linear
    elif scheme == "mxfp4" and kind == "torch packed":  # 8-bit codes with a scale per block
        expected_class = layers.DequantizingLinear
    assert isinstance(layer, expected_class)
    x = torch.randn(5, 256)
    expected = x.to(dtype).double() @ expanded(weight).double().t() + bias.double()
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(
        layer(x.to(dtype)).double(), expected, atol=tolerance * 10, rtol=tolerance
    )


def quantized_reference(path, scheme: str, quantize_head: bool = True):
    """transformers' model with every weight our loader quantizes replaced by its
    quantized value (routers and norms stay float)."""
    model = load_reference(path)
    quantization = WEIGHT_QUANTIZATIONS[scheme]
    with torch.no_grad():
        for name, param in model.named_parameters():
            is_head = "embed_tokens" in name or "lm_head" in name
            scheme = quantization.for_head if is_head else quantization
            if param.dim() == 2 and (quantize_head or not is_head):
                param.copy_(expanded(scheme.quantize(param.data)))
    return model


@pytest.fixture(scope="module")
def tiny_model_to_quantize(tmp_path_factory, hf_tokenizer_dir):
    # Inputs of 128 and 256: every weight divides into int4's groups of 128.
    return make_tiny_model(
        "llama",
        tmp_path_factory.mktemp("to_quantize"),
        hf_tokenizer_dir,
        hidden_size=128,
        intermediate_size=256,
    )


@pytest.mark.parametrize("scheme", list(WEIGHT_QUANTIZATIONS))
def test_quantized_model_equals_transformers_on_the_same_quantized_weights(
    tiny_model_to_quantize, scheme
):
    # Float activations, as transformers multiplies (8-bit ones: the test below).
    llm = LLM(str(tiny_model_to_quantize), quantization=scheme, int8_activations=False)
    prompt = list(range(5, 45))
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    ours = llm.generate(prompt, params)[0].token_ids
    theirs, _ = reference_greedy(quantized_reference(tiny_model_to_quantize, scheme), prompt, 8)
    assert ours == theirs
    model = llm.engine.runner.model
    assert not any(isinstance(m, torch.nn.Linear) for m in model.model.layers.modules())


def _round_input(_module: torch.nn.Module, args: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
    x = args[0]
    return (block_quantized_matmul.round_to_int8_blocks(x.reshape(-1, x.shape[-1])).view_as(x),)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_int8_activations_equal_transformers_rounding_each_linear_input(
    tiny_model_to_quantize, scheme
):
    """With 8-bit activations, every product over quantized weights takes its
    input rounded to 8 bits per 32 values: transformers, given the same weights and the
    same rounding at the input of each linear layer, head included, gives the same tokens."""
    if block_quantized_matmul.kernel_library() is None:
        pytest.skip("the block kernel needs a C++ compiler")
    llm = LLM(str(tiny_model_to_quantize), quantization=scheme, int8_activations=True)
    reference = quantized_reference(tiny_model_to_quantize, scheme)
    for module in reference.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(_round_input)
    prompt = list(range(5, 45))
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    assert llm.generate(prompt, params)[0].token_ids == reference_greedy(reference, prompt, 8)[0]


def test_head_stays_float_when_asked(tiny_model_to_quantize):
    llm = LLM(
        str(tiny_model_to_quantize),
        quantization="int8",
        quantize_head=False,
        int8_activations=False,
    )
    model = llm.engine.runner.model
    assert model.model.embed_tokens.weight.dtype == torch.float32
    prompt = list(range(7, 30))
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    reference = quantized_reference(tiny_model_to_quantize, "int8", quantize_head=False)
    assert llm.generate(prompt, params)[0].token_ids == reference_greedy(reference, prompt, 6)[0]


def test_unknown_quantization_is_refused_in_one_line():
    with pytest.raises(InvalidRequestError, match="quantization must be one of int8, int4"):
        EngineConfig(quantization="int3")


def quantized_moe_reference(path, scheme: str):
    """transformers' MoE model with each expert's gate, up and down weights, and every
    other linear weight but the routers', replaced by its quantized value."""
    model = load_reference(path)
    quantization = WEIGHT_QUANTIZATIONS[scheme]
    with torch.no_grad():
        for name, param in model.named_parameters():
            is_router = name.endswith(".gate.weight") or "shared_expert_gate" in name
            is_head = "embed_tokens" in name or "lm_head" in name
            scheme_here = quantization.for_head if is_head else quantization
            if param.dim() == 2 and not is_router:
                param.copy_(expanded(scheme_here.quantize(param.data)))
            elif param.dim() == 3:  # experts [E, rows, k]: gate and up quantized apart
                halves = 2 if name.endswith("gate_up_proj") else 1
                for expert in param:
                    for part in expert.chunk(halves):
                        part.copy_(expanded(quantization.quantize(part.clone())))
    return model


@pytest.mark.parametrize("scheme", ["int8", "int4", "fp8"])
@pytest.mark.parametrize("block_kernel", [True, False])
def test_quantized_experts_equal_transformers(
    tmp_path, hf_tokenizer_dir, scheme, block_kernel, monkeypatch
):
    if not block_kernel:  # a CPU without the block kernel: QuantizedExperts
        monkeypatch.setattr(layers, "kernel_library", lambda: None)
    elif block_quantized_matmul.kernel_library() is None:
        pytest.skip("the block kernel needs a C++ compiler")
    path = save_tiny_moe("qwen3_moe", tmp_path, hf_tokenizer_dir)
    # transformers multiplies float activations: so must we, to give its tokens.
    llm = LLM(str(path), quantization=scheme, int8_activations=False)
    experts = llm.engine.runner.model.model.layers[0].mlp.experts
    on_kernel = block_kernel and scheme != "fp8"
    assert isinstance(experts, BlockQuantizedExperts if on_kernel else QuantizedExperts)
    prompt = list(range(20, 60))
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    reference = quantized_moe_reference(path, scheme)
    assert llm.generate(prompt, params)[0].token_ids == reference_greedy(reference, prompt, 8)[0]


def test_int4_weight_without_offsets_runs_in_torchs_int4_product():
    codes = torch.randint(0, 16, (64, 128), dtype=torch.uint8)
    weight = BlockQuantizedWeight(4, codes, torch.rand(64, 4), None)
    layer = layers.quantized_linear(weight, None, torch.bfloat16, CPU)
    assert isinstance(layer, layers.Int4PackedLinear)
    x = torch.randn(3, 128).bfloat16()
    expected = x.double() @ expanded(weight).double().t()
    torch.testing.assert_close(layer(x).double(), expected, rtol=2e-2, atol=0.2)
