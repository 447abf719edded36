"""compressed-tensors checkpoints, end to end: a tiny random Llama whose linear layers
compressed-tensors itself quantizes (min-max scales, as llm-compressor's observer sets
them) and compresses, saved as a checkpoint folder with the library's
`quantization_config`, must load in Tome with its layers still quantized and give the
greedy tokens transformers gives on the same folder, dequantized on the CPU at load time
by compressed-tensors (`CompressedTensorsConfig(dequantize=True)`). The model is float32,
so its scales are too and both sides compute the same weights."""

import json
from pathlib import Path

import pytest
import torch
from compressed_tensors.compressors import ModelCompressor
from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
from compressed_tensors.quantization.utils import calculate_qparams
from safetensors.torch import save_file
from transformers import CompressedTensorsConfig

from tests.conftest import make_tiny_model
from tests.reference import load_reference, reference_greedy
from tests.test_quantized_formats_ct_fp8 import _min_max, _scheme
from tome import LLM, SamplingParams
from tome.layers.transposed_linear import TransposedLinear

# int4 group 128 symmetric, int4 group 32 asymmetric, int8 per channel, e4m3 per channel
# and e4m3 in 128 x 128 blocks (cut at the edges of the 64-row k_proj and v_proj).
SCHEMES = ["W4A16", "int4-group32-asym", "W8A16", "FP8_DYNAMIC", "FP8_BLOCK"]


def write_compressed(float_dir: Path, out_dir: Path, name: str) -> None:
    """The float checkpoint in `float_dir`, its layers' linear weights quantized and
    compressed by compressed-tensors under scheme `name` (lm_head kept in float)."""
    model = load_reference(float_dir)
    config = QuantizationConfig(config_groups={"group_0": _scheme(name)}, ignore=["lm_head"])
    apply_quantization_config(model, config, show_progress=False)
    for module in model.modules():
        args = getattr(getattr(module, "quantization_scheme", None), "weights", None)
        if args is None:
            continue
        scale, zero_point = calculate_qparams(*_min_max(module.weight.data, args), args)
        module.weight_scale.data = scale
        if not args.symmetric:
            module.weight_zero_point.data = zero_point
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    out_dir.mkdir()
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
    for file in float_dir.iterdir():
        if file.name != "model.safetensors":
            (out_dir / file.name).write_bytes(file.read_bytes())
    compressor.update_config(str(out_dir))
    assert "quantization_config" in json.loads((out_dir / "config.json").read_text())


@pytest.fixture(scope="module")
def float_model(tmp_path_factory, hf_tokenizer_dir) -> Path:
    return make_tiny_model(
        "llama",
        tmp_path_factory.mktemp("float"),
        hf_tokenizer_dir,
        hidden_size=128,
        intermediate_size=256,
    )


@pytest.mark.parametrize("name", SCHEMES)
def test_compressed_tensors_checkpoint_equals_transformers(float_model, tmp_path, name):
    folder = tmp_path / name
    write_compressed(float_model, folder, name)
    reference = load_reference(folder, quantization_config=CompressedTensorsConfig(dequantize=True))
    llm = LLM(str(folder), int8_activations=False)  # as transformers multiplies
    prompt = list(range(11, 50))
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    assert llm.generate(prompt, params)[0].token_ids == reference_greedy(reference, prompt, 8)[0]
    qkv = llm.engine.runner.model.model.layers[0].self_attn.qkv_proj
    assert not isinstance(qkv, torch.nn.Linear | TransposedLinear)
