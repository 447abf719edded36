"""Pre-quantized checkpoints, loaded whole: a tiny Llama's linear layers written as AWQ,
GPTQ (with act-order) and FP8-block checkpoints, each packed by the test straight from the
format's documented layout (the packers of test_quantized_formats_awq_gptq.py), must give
the greedy output transformers gives with the float weights the format defines."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import make_tiny_model
from tests.reference import load_reference, reference_greedy
from tests.test_quantized_formats_awq_gptq import _awq_pack, _gptq_case, _reference
from tome import LLM, SamplingParams
from tome.errors import ModelLoadError
from tome.layers.quantized_linear import InputPermutedLinear
from tome.layers.transposed_linear import TransposedLinear

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GROUP = 32


def _awq(k: int, n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Random AWQ tensors of a layer [n, k] and the weight they define,
    w[o, i] = scales[i // g, o] * (q[i, o] - z[i // g, o])."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (k, n), generator=gen)
    z = torch.randint(0, 16, (k // GROUP, n), generator=gen)
    scales = (torch.randn(k // GROUP, n, generator=gen) * 0.02).to(torch.float16)
    weight = (scales.float().repeat_interleave(GROUP, 0) * (q - z.repeat_interleave(GROUP, 0))).T
    tensors = {"qweight": _awq_pack(q), "qzeros": _awq_pack(z), "scales": scales}
    return tensors, weight


def _gptq(k: int, n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    q, z, scales, _, tensors = _gptq_case(k, n, 4, GROUP, "act_order", seed)
    # One act-order per input size: GPTQ orders a layer's inputs by its input's Hessian,
    # which q/k/v (and gate/up) share, so their orders agree.
    shuffle = torch.randperm(k, generator=torch.Generator().manual_seed(k))
    g_idx = (torch.arange(k) // GROUP)[shuffle]
    tensors["g_idx"] = g_idx.to(torch.int32)
    return tensors, _reference(q, z, scales, g_idx)


def _fp8(k: int, n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """e4m3 values under a float32 scale per 128 x 128 block (the last blocks cut to n, k):
    w = weight * weight_scale_inv, as DeepSeek-V3's weight_dequant computes it."""
    gen = torch.Generator().manual_seed(seed)
    values = (torch.randn(n, k, generator=gen) * 100).to(torch.float8_e4m3fn)
    scale_inv = torch.rand(-(-n // 128), -(-k // 128), generator=gen) * 1e-3
    expanded = scale_inv.repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    return {"weight": values, "weight_scale_inv": scale_inv}, values.float() * expanded


FORMATS = {
    "awq": (
        _awq,
        {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True},
    ),
    "gptq": (
        _gptq,
        {
            "quant_method": "gptq",
            "bits": 4,
            "group_size": GROUP,
            "desc_act": True,
            "sym": False,
            "checkpoint_format": "gptq_v2",
        },
    ),
    "fp8": (
        _fp8,
        {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]},
    ),
}


def write_quantized(float_dir, out_dir, kind: str):
    """The float checkpoint in `float_dir` with its layers' linear weights replaced by
    random quantized ones; returns the float state dict of the weights they define."""
    make, quantization_config = FORMATS[kind]
    state = load_file(float_dir / "model.safetensors")
    defined = dict(state)
    for name in [n for n in state if n.rsplit(".", 2)[-2] in LINEAR]:
        module = name.removesuffix(".weight")
        n, k = state.pop(name).shape
        tensors, weight = make(k, n, seed=len(defined) + n + k)
        state |= {f"{module}.{suffix}": t for suffix, t in tensors.items()}
        defined[name] = weight
    out_dir.mkdir()
    save_file(state, out_dir / "model.safetensors")
    for file in float_dir.iterdir():
        if file.name != "model.safetensors":
            (out_dir / file.name).write_bytes(file.read_bytes())
    config = json.loads((out_dir / "config.json").read_text())
    config["quantization_config"] = quantization_config
    (out_dir / "config.json").write_text(json.dumps(config))
    return defined


@pytest.fixture(scope="module")
def float_model(tmp_path_factory, hf_tokenizer_dir):
    return make_tiny_model(
        "llama",
        tmp_path_factory.mktemp("float"),
        hf_tokenizer_dir,
        hidden_size=128,
        intermediate_size=256,
    )


@pytest.mark.parametrize("kind", list(FORMATS))
def test_quantized_checkpoint_equals_transformers_on_the_weights_it_defines(
    float_model, tmp_path, kind
):
    defined = write_quantized(float_model, tmp_path / kind, kind)
    reference = load_reference(float_model)
    reference.load_state_dict({n: t.float() for n, t in defined.items()}, strict=False)
    llm = LLM(str(tmp_path / kind), int8_activations=False)  # as transformers multiplies
    prompt = list(range(11, 50))
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    assert llm.generate(prompt, params)[0].token_ids == reference_greedy(reference, prompt, 8)[0]
    assert llm.engine.weight_quantization == kind  # what /v1/models reports
    attention = llm.engine.runner.model.model.layers[0].self_attn
    assert not isinstance(attention.qkv_proj, torch.nn.Linear | TransposedLinear)
    # Act-order: the inputs are permuted once, the weight stays quantized.
    assert isinstance(attention.qkv_proj, InputPermutedLinear) == (kind == "gptq")


def test_unknown_quantization_method_is_refused_in_one_line(float_model, tmp_path):
    write_quantized(float_model, tmp_path / "awq", "awq")
    config_file = tmp_path / "awq" / "config.json"
    config = json.loads(config_file.read_text())
    config["quantization_config"]["quant_method"] = "bitsandbytes"
    config_file.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="quant_method 'bitsandbytes' is not supported"):
        LLM(str(tmp_path / "awq"))
