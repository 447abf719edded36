"""compressed-tensors and FP8 block checkpoints decoded into BlockQuantizedWeight and
Float8Weight, checked against the formats' own libraries: compressed-tensors quantizes,
packs and decompresses; transformers quantizes and dequantizes FP8 blocks."""

import json
from types import SimpleNamespace

import pytest
import torch
from compressed_tensors.compressors import BaseCompressor, ModelCompressor
from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationConfig,
    QuantizationScheme,
    apply_quantization_config,
    preset_name_to_scheme,
)
from compressed_tensors.quantization.utils import (
    calculate_qparams,
    maybe_pad_tensor_for_block_quant,
)
from torch import nn
from transformers import FineGrainedFP8Config
from transformers.integrations.finegrained_fp8 import (
    Fp8Dequantize,
    Fp8Quantize,
    _dequantize_fp8_weight,
)

from tome.errors import ModelLoadError
from tome.kernels.block_quantized_matmul import BlockQuantizedWeight
from tome.kernels.float8_matmul import Float8Weight, dequantize_float8
from tome.loader.quantized_formats.compressed_tensors import CompressedTensorsFormat
from tome.loader.quantized_formats.fp8_blocks import Fp8BlockFormat

N, K = 256, 512
FLOAT_ACTIVATIONS = {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True}


def _args(weights: dict, activations: dict | None = None) -> dict:
    return {"weights": QuantizationArgs(**weights)} | (
        {} if activations is None else {"input_activations": QuantizationArgs(**activations)}
    )


def _int(bits: int, symmetric: bool, group: int | None) -> dict:
    strategy = {"strategy": "group", "group_size": group} if group else {"strategy": "channel"}
    return _args({"num_bits": bits, "type": "int", "symmetric": symmetric, **strategy})


# Scheme arguments -> the storage format the library picks for them. The presets are
# llm-compressor's; int activations make W8A8 "int-quantized", float ones "float-quantized".
SCHEMES = {
    "W4A16": ("preset", "pack-quantized"),
    "W4A16_ASYM": ("preset", "pack-quantized"),
    "int4-group32": (_int(4, True, 32), "pack-quantized"),
    "int4-group32-asym": (_int(4, False, 32), "pack-quantized"),
    "W8A16": ("preset", "pack-quantized"),
    "int8-channel": (_int(8, True, None), "pack-quantized"),
    "int8-channel-asym": (_int(8, False, None), "pack-quantized"),
    "int8-group64-asym": (_int(8, False, 64), "pack-quantized"),
    "W8A8": ("preset", "int-quantized"),
    "FP8": ("preset", "float-quantized"),
    "FP8_DYNAMIC": ("preset", "float-quantized"),
    "FP8_BLOCK": ("preset", "float-quantized"),
    "fp8-group128": (
        _args(
            {"num_bits": 8, "type": "float", "strategy": "group", "group_size": 128},
            FLOAT_ACTIVATIONS,
        ),
        "float-quantized",
    ),
}
# Schemes whose weights are one product, scale * value: exact even under float32 scales.
ONE_PRODUCT = {"int8-channel", "W8A16", "W8A8", "FP8", "FP8_DYNAMIC", "FP8_BLOCK", "fp8-group128"}


def _scheme(name: str) -> QuantizationScheme:
    arguments, _ = SCHEMES[name]
    if arguments == "preset":
        return preset_name_to_scheme(name, targets=["Linear"])
    return QuantizationScheme(targets=["Linear"], **arguments)


class Tiny(nn.Module):
    def __init__(self, n: int, k: int, dtype: torch.dtype) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(n * k)
        # A per-row shift, so asymmetric zero points differ from row to row.
        weight = torch.randn(n, k, generator=generator) * 0.02
        weight += torch.rand(n, 1, generator=generator) * 0.03
        self.proj = nn.Linear(k, n, bias=False, dtype=dtype)
        self.proj.weight.data = weight.to(dtype)
        self.lm_head = nn.Linear(k, 8, bias=False, dtype=dtype)


def _min_max(weight: torch.Tensor, args: QuantizationArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """What llm-compressor's min-max observer would see, per the strategy's scale."""
    if args.strategy == "tensor":
        return weight.amin(), weight.amax()
    if args.strategy == "channel":
        return weight.amin(1, keepdim=True), weight.amax(1, keepdim=True)
    if args.strategy == "group":
        groups = weight.unflatten(1, (-1, args.group_size))
        return groups.amin(-1), groups.amax(-1)
    rows, columns = args.block_structure
    padded = maybe_pad_tensor_for_block_quant(weight, tuple(args.block_structure))
    blocks = padded.unflatten(1, (-1, columns)).unflatten(0, (-1, rows))
    return blocks.amin((1, 3)), blocks.amax((1, 3))


def _library_checkpoint(name: str, dtype: torch.dtype, tmp_path, n: int = N, k: int = K):
    """A tiny model quantized and compressed by compressed-tensors: its config.json
    quantization_config, its state dict, and the library's own decompression of `proj`
    computed in float32."""
    model = Tiny(n, k, dtype)
    config = QuantizationConfig(config_groups={"group_0": _scheme(name)}, ignore=["lm_head"])
    apply_quantization_config(model, config, show_progress=False)
    args = model.proj.quantization_scheme.weights
    scale, zero_point = calculate_qparams(*_min_max(model.proj.weight.data, args), args)
    model.proj.weight_scale.data = scale
    if not args.symmetric:
        model.proj.weight_zero_point.data = zero_point
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    compressor.update_config(str(tmp_path))
    quantization_config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    tensors = {
        key.removeprefix("proj."): value.detach().clone()
        for key, value in model.state_dict().items()
        if key.startswith("proj.")
    }
    storage = quantization_config["config_groups"]["group_0"]["format"]
    decompressor = BaseCompressor.get_value_from_registry(storage)
    float32_scales = tensors | {"weight_scale": tensors["weight_scale"].to(torch.float32)}
    reference = decompressor.decompress(float32_scales, model.proj.quantization_scheme)["weight"]
    assert reference.dtype == torch.float32
    return quantization_config, tensors, reference


def _expanded(weight: BlockQuantizedWeight | Float8Weight) -> torch.Tensor:
    """W [n, k] in float32 as Tome computes it: scale * q + offset, value * scale."""
    if isinstance(weight, Float8Weight):
        return dequantize_float8(weight, torch.float32)
    q = weight.codes.view(torch.int8) if weight.bits == 8 else weight.codes
    w = q.to(torch.float32) * weight.scales.repeat_interleave(32, dim=1)
    if weight.offsets is not None:
        w = w + weight.offsets.repeat_interleave(32, dim=1)
    return w


def _check_layout(weight: BlockQuantizedWeight | Float8Weight, n: int, k: int) -> None:
    assert weight.shape == (n, k)
    if isinstance(weight, Float8Weight):
        assert weight.values.dtype == torch.float8_e4m3fn
        assert weight.scales.shape == (n, -(-k // weight.block_k))
        assert weight.scales.dtype == torch.float32
        return
    assert weight.codes.dtype == torch.uint8
    assert weight.scales.shape == (n, k // 32) and weight.scales.dtype == torch.float32
    if weight.bits == 4:
        assert int(weight.codes.max()) <= 15
        assert weight.offsets is not None
    if weight.offsets is not None:
        assert weight.offsets.shape == (n, k // 32) and weight.offsets.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(SCHEMES))
def test_compressed_tensors_weights_equal_the_library_decompression(name, dtype, tmp_path):
    config, tensors, reference = _library_checkpoint(name, dtype, tmp_path)
    assert config["config_groups"]["group_0"]["format"] == SCHEMES[name][1]
    checkpoint = CompressedTensorsFormat.from_config(config)
    assert checkpoint.is_quantized("proj") and not checkpoint.is_quantized("lm_head")
    assert set(tensors) <= checkpoint.suffixes | {"weight"}
    decoded = checkpoint.decode("proj", tensors)
    assert decoded.input_order is None
    _check_layout(decoded.weight, N, K)
    assert torch.equal(_expanded(decoded.weight), reference)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_float32_scales(name, tmp_path):
    """A float32 scale can have more significant bits than the products scale * code and
    scale * zero keep: one-product schemes stay exact, the rest within a few float32
    rounding steps of a scale (far below one quantization step)."""
    config, tensors, reference = _library_checkpoint(name, torch.float32, tmp_path)
    weight = CompressedTensorsFormat.from_config(config).decode("proj", tensors).weight
    ours = _expanded(weight)
    if name in ONE_PRODUCT:
        assert torch.equal(ours, reference)
    else:
        step = weight.scales.repeat_interleave(32, dim=1)
        assert ((ours - reference).abs() <= step * 2.0**-14).all()


def test_compressed_tensors_blocks_cut_at_the_edges(tmp_path):
    """FP8_BLOCK on n and k that are not multiples of 128: the library pads to whole
    blocks to quantize and stores the weight at its own shape."""
    config, tensors, reference = _library_checkpoint(
        "FP8_BLOCK", torch.bfloat16, tmp_path, 200, 320
    )
    weight = CompressedTensorsFormat.from_config(config).decode("proj", tensors).weight
    _check_layout(weight, 200, 320)
    assert weight.block_k == 128
    assert torch.equal(_expanded(weight), reference)


def test_scheme_choice_matches_the_library():
    """Which group's scheme each linear layer gets (exact names over regexes over "Linear",
    `ignore` first), compared with apply_quantization_config's choice on a model with
    those names."""
    groups = {
        "group_0": QuantizationScheme(targets=["Linear"], **_int(4, True, 128)),
        "group_1": QuantizationScheme(targets=["re:.*down_proj$"], **_int(8, True, None)),
        "group_2": QuantizationScheme(targets=["layers.1.mlp.up_proj"], **_int(4, False, 32)),
    }
    ignore = ["lm_head", "re:.*mlp\\.gate$"]
    model = nn.Module()
    model.layers = nn.ModuleList()
    for _ in range(2):
        mlp = nn.Module()
        for projection in ("gate", "up_proj", "down_proj"):
            setattr(mlp, projection, nn.Linear(128, 128, bias=False))
        layer = nn.Module()
        layer.mlp = mlp
        model.layers.append(layer)
    model.lm_head = nn.Linear(128, 8, bias=False)
    config = QuantizationConfig(config_groups=groups, ignore=ignore)
    apply_quantization_config(model, config, show_progress=False)

    dumped = config.model_dump() | {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
    }
    checkpoint = CompressedTensorsFormat.from_config(dumped)
    seen = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            library = getattr(module, "quantization_scheme", None)
            ours = checkpoint.scheme(name)
            assert checkpoint.is_quantized(name) == (library is not None), name
            if library is not None:
                theirs = library.weights
                assert (ours.bits, ours.symmetric) == (theirs.num_bits, theirs.symmetric), name
                seen.add((ours.bits, ours.symmetric))
    assert seen == {(4, True), (8, True), (4, False)}


def _config(weights: dict, **top) -> dict:
    group = {"targets": ["Linear"], "weights": weights}
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "config_groups": {"group_0": group},
        "quantization_status": "compressed",
    } | top


INT4 = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 128}
FP8_WEIGHTS = {"num_bits": 8, "type": "float", "strategy": "channel"}


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (_config(INT4, format="nvfp4-pack-quantized"), "nvfp4-pack-quantized"),
        (_config(INT4, format="mixed-precision"), "mixed-precision"),
        (_config(INT4 | {"num_bits": 3}), "3-bit"),
        (_config(INT4 | {"num_bits": 2, "type": "float"}), "float weights"),
        (_config(INT4 | {"strategy": "tensor"}), "strategy 'tensor'"),
        (_config(INT4 | {"group_size": 16}), "group_size 16"),
        (_config(INT4 | {"actorder": "group"}), "actorder 'group'"),
        (_config(INT4 | {"dynamic": True}), "dynamic"),
        (_config(FP8_WEIGHTS | {"symmetric": False}, format="float-quantized"), "asymmetric"),
        (_config(INT4, quantization_status="frozen"), "quantization_status 'frozen'"),
        (_config(INT4, transform_config={"config_groups": {"u": {}}}), "transform_config"),
        (_config(INT4, quant_method="awq"), "quant_method 'awq'"),
    ],
)
def test_unsupported_compressed_tensors_configs(config, named):
    with pytest.raises(ModelLoadError) as raised:
        CompressedTensorsFormat.from_config(config)
    assert named in raised.value.message and "\n" not in raised.value.message


def test_malformed_compressed_tensors_layers(tmp_path):
    config, tensors, _ = _library_checkpoint("W4A16_ASYM", torch.bfloat16, tmp_path)
    checkpoint = CompressedTensorsFormat.from_config(config)
    broken = [
        {key: value for key, value in tensors.items() if key != "weight_zero_point"},
        tensors | {"weight_scale": tensors["weight_scale"][:, :1]},
        tensors | {"weight_shape": torch.tensor([N, 2 * K])},
    ]
    for layer in broken:
        with pytest.raises(ModelLoadError) as raised:
            checkpoint.decode("proj", layer)
        assert raised.value.message.startswith("compressed-tensors proj: ")
        assert "\n" not in raised.value.message
    with pytest.raises(ModelLoadError, match="lm_head is not a quantized layer"):
        checkpoint.decode("lm_head", tensors)


def _fp8_config(**changes) -> dict:
    # As transformers writes it into config.json.
    return json.loads(FineGrainedFP8Config(**changes).to_json_string())


def _deepseek_weight_dequant(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3's inference/kernel.py `weight_dequant` as a loop: program (i, j) loads
    the 128 x 128 block at rows 128 i, columns 128 j (masked at the edges), takes
    s = scales[i, j] and stores y = x.float() * s."""
    y = torch.empty(values.shape, dtype=torch.float32)
    for i in range(scales.shape[0]):
        for j in range(scales.shape[1]):
            rows, columns = slice(128 * i, 128 * (i + 1)), slice(128 * j, 128 * (j + 1))
            y[rows, columns] = values[rows, columns].to(torch.float32) * scales[i, j]
    return y


@pytest.mark.parametrize(("n", "k"), [(256, 512), (200, 320), (130, 1000), (5, 7)])
def test_fp8_blocks_equal_transformers_and_deepseek(n, k):
    generator = torch.Generator().manual_seed(n + k)
    values = (torch.randn(n, k, generator=generator) * 100).to(torch.float8_e4m3fn)
    scales = torch.rand(-(-n // 128), -(-k // 128), generator=generator) * 1e-3
    tensors = {"weight": values, "weight_scale_inv": scales}
    weight = Fp8BlockFormat.from_config(_fp8_config()).decode("proj", tensors).weight
    _check_layout(weight, n, k)
    assert weight.block_k == 128
    ours = dequantize_float8(weight, torch.float32)
    assert torch.equal(ours, _dequantize_fp8_weight(values, scales, [128, 128], torch.float32))
    assert torch.equal(ours, _deepseek_weight_dequant(values, scales))


def test_fp8_blocks_quantized_by_transformers():
    config = FineGrainedFP8Config()
    original = torch.randn(256, 384, generator=torch.Generator().manual_seed(1))
    quantized = Fp8Quantize(SimpleNamespace(quantization_config=config))._quantize_one(
        "proj.weight", original
    )
    tensors = {key.removeprefix("proj."): value for key, value in quantized.items()}
    weight = Fp8BlockFormat.from_config(_fp8_config()).decode("proj", tensors).weight
    reference = _dequantize_fp8_weight(
        tensors["weight"], tensors["weight_scale_inv"], [128, 128], torch.float32
    )
    assert torch.equal(dequantize_float8(weight, torch.float32), reference)
    assert (dequantize_float8(weight, torch.float32) - original).abs().max() < 0.3


@pytest.mark.parametrize("name", ["weight_scale", "weight_scale_inv"])
@pytest.mark.parametrize("shape", [(), (1,)])
def test_fp8_per_tensor_scales(name, shape):
    """No weight_block_size: vLLM and AutoFP8 files name the one scale weight_scale,
    transformers weight_scale_inv; static activation scales come along and are dropped."""
    values = (torch.randn(96, 200) * 50).to(torch.float8_e4m3fn)
    scale = torch.full(shape, 0.0123)
    tensors = {"weight": values, name: scale, "input_scale": torch.tensor(0.5)}
    config = _fp8_config(weight_block_size=None, activation_scheme="static")
    weight = Fp8BlockFormat.from_config(config).decode("proj", tensors).weight
    _check_layout(weight, 96, 200)
    reference = _dequantize_fp8_weight(values, scale, None, torch.float32)
    assert torch.equal(dequantize_float8(weight, torch.float32), reference)


@pytest.mark.parametrize("stored", [torch.uint8, torch.float8_e8m0fnu])
def test_fp8_exponent_scales(stored):
    """scale_fmt "ue8m0": power-of-two scales, as e8m0 or as its raw exponent bytes."""
    values = (torch.randn(256, 256) * 50).to(torch.float8_e4m3fn)
    exponents = torch.randint(100, 130, (2, 2), dtype=torch.uint8)
    tensors = {"weight": values, "weight_scale_inv": exponents.view(stored)}
    config = _fp8_config(scale_fmt="ue8m0")
    weight = Fp8BlockFormat.from_config(config).decode("proj", tensors).weight
    reference = Fp8Dequantize(None)._dequantize_one(values, exponents, torch.float32)
    assert torch.equal(dequantize_float8(weight, torch.float32), reference)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"quant_method": "fbgemm_fp8"}, "quant_method 'fbgemm_fp8'"),
        ({"fmt": "e5m2"}, "fmt 'e5m2'"),
        ({"weight_block_size": [128]}, "weight_block_size [128]"),
        ({"weight_block_size": [0, 128]}, "weight_block_size"),
        ({"expert_dtype": "fp4"}, "expert_dtype 'fp4'"),
        ({"activation_scheme": "per-head"}, "activation_scheme"),
        ({"scale_fmt": "e4m3"}, "scale_fmt 'e4m3'"),
    ],
)
def test_unsupported_fp8_configs(changes, named):
    with pytest.raises(ModelLoadError) as raised:
        Fp8BlockFormat.from_config(_fp8_config() | changes)
    assert named in raised.value.message and "\n" not in raised.value.message


def test_malformed_fp8_layers():
    values = torch.zeros(256, 256, dtype=torch.float8_e4m3fn)
    checkpoint = Fp8BlockFormat.from_config(_fp8_config())
    broken = [
        {"weight": values},
        {"weight": values, "weight_scale_inv": torch.ones(1, 2)},
        {"weight": values.to(torch.bfloat16), "weight_scale_inv": torch.ones(2, 2)},
        {"weight": values, "weight_scale_inv": torch.ones(2, 2, dtype=torch.int32)},
    ]
    for layer in broken:
        with pytest.raises(ModelLoadError) as raised:
            checkpoint.decode("model.layers.0.mlp.up_proj", layer)
        assert raised.value.message.startswith("fp8 model.layers.0.mlp.up_proj: ")
        assert "\n" not in raised.value.message
    # No weight_block_size means per tensor, as vLLM reads it, so block scales are refused.
    per_tensor = {"quant_method": "fp8", "activation_scheme": "dynamic"}
    with pytest.raises(ModelLoadError, match=r"per-tensor scale is \[2, 2\], not one value"):
        Fp8BlockFormat.from_config(per_tensor).decode(
            "proj", {"weight": values, "weight_scale_inv": torch.ones(2, 2)}
        )
