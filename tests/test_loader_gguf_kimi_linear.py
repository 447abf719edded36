"""Kimi Linear as GGUF files written by llama.cpp's own converter (`kimi-linear`): KDA
layers told apart by a per-layer head_count_kv, KDA's A stored as -exp(A_log), its short
convolutions reshaped, DeepSeek-style latent attention and MoE. Loaded by our loader, an
F32 file gives transformers' outputs on the HF folder it was converted from, in two layer
patterns (a KDA head count other than the attention's; q_lora; two shared experts); a Q8_0
file, kept in blocks, gives the outputs of its own weights dequantized; a file whose layer
pattern is not one entry per layer, or whose router is not sigmoid, is refused in one
line."""

import json

import gguf
import pytest
import transformers
from safetensors.torch import load_file, save_file

from tests.llama_cpp_converter import convert
from tests.reference import load_reference
from tests.test_bad_input import assert_one_line
from tests.test_engine_equality import assert_matches_reference, greedy_params, random_prompts
from tests.test_kimi_linear import COMMON, KIMI_MODELS
from tests.test_moe_models import save_random_moe
from tome import LLM
from tome.engine import model_loading
from tome.errors import ModelLoadError
from tome.layers.block_quantized_experts import BlockQuantizedExperts
from tome.layers.block_quantized_linear import BlockQuantizedLinear
from tome.loader.gguf_metadata_cache import converted_metadata_dir

# llama.cpp's converter reads the expert group count as `n_group`, which Kimi Linear's
# config calls num_expert_group, so a file keeps no groups (Moonshot's model has one).
ONE_GROUP = {"n_group": 1, "topk_group": 1}
CONFIG_FIELDS = (
    "layer_types", "mlp_layer_types", "linear_num_heads", "linear_head_dim",
    "linear_conv_kernel_dim", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
    "qk_rope_head_dim", "v_head_dim", "moe_intermediate_size", "num_local_experts",
    "num_experts_per_tok", "n_shared_experts", "routed_scaling_factor", "norm_topk_prob",
    "n_group", "topk_group", "tie_word_embeddings",
)  # fmt: skip
ENGINE = {"kv_cache_memory": 4 << 20, "max_num_batched_tokens": 32, "max_num_seqs": 4}
# Past a KDA chunk of 64, prefilled in chunks of 32.
PROMPTS = random_prompts([5, 70], seed=7)


def save_as_moonshot(name: str, folder, tokenizer_dir):
    """A tiny random Kimi Linear saved as Moonshot's checkpoint is, the form llama.cpp's
    converter reads: transformers' save leaves out the config's linear_attn_config,
    first_k_dense_replace and router function, and names the dense layers' MLP
    block_sparse_moe where Moonshot's names it mlp."""
    config = transformers.KimiLinearConfig(**{**COMMON, **KIMI_MODELS[name], **ONE_GROUP})
    save_random_moe(config, folder, tokenizer_dir)
    fields = json.loads((folder / "config.json").read_text())
    kinds = config.layer_types
    fields["linear_attn_config"] = {
        # Moonshot numbers layers from 1.
        "kda_layers": [i + 1 for i, kind in enumerate(kinds) if kind == "linear_attention"],
        "full_attn_layers": [i + 1 for i, kind in enumerate(kinds) if kind == "full_attention"],
        "head_dim": config.linear_head_dim,
        "num_heads": config.linear_num_heads,
        "short_conv_kernel_size": config.linear_conv_kernel_dim,
    }
    fields["first_k_dense_replace"] = config.mlp_layer_types.count("dense")
    fields["moe_router_activation_func"] = "sigmoid"
    (folder / "config.json").write_text(json.dumps(fields))
    dense = tuple(
        f"model.layers.{i}." for i, k in enumerate(config.mlp_layer_types) if k == "dense"
    )
    renamed = {
        key.replace(".block_sparse_moe.", ".mlp.") if key.startswith(dense) else key: tensor
        for key, tensor in load_file(folder / "model.safetensors").items()
    }
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module", params=list(KIMI_MODELS))
def float_gguf(request, tmp_path_factory, hf_tokenizer_dir):
    folder = save_as_moonshot(
        request.param, tmp_path_factory.mktemp(request.param), hf_tokenizer_dir
    )
    return folder, convert(folder, folder.parent / f"{folder.name}-f32.gguf", "f32")


@pytest.fixture(scope="module")
def q8_gguf(tmp_path_factory, hf_tokenizer_dir):
    folder = save_as_moonshot(
        "kda_first_dense", tmp_path_factory.mktemp("kimi_q8"), hf_tokenizer_dir
    )
    return convert(folder, folder.parent / f"{folder.name}-q8_0.gguf", "q8_0")


def test_the_config_states_what_the_hf_one_does(float_gguf):
    folder, gguf_file = float_gguf
    theirs = transformers.AutoConfig.from_pretrained(folder)
    ours = transformers.AutoConfig.from_pretrained(converted_metadata_dir(gguf_file))
    assert type(ours) is type(theirs)
    for field in CONFIG_FIELDS:
        assert getattr(ours, field) == getattr(theirs, field), field


def test_a_float_gguf_equals_transformers_on_the_hf_folder(float_gguf):
    folder, gguf_file = float_gguf
    llm = LLM(str(gguf_file), **ENGINE)
    assert_matches_reference(
        load_reference(folder), PROMPTS, llm.generate(PROMPTS, greedy_params())
    )


def test_quantized_blocks_equal_their_dequantized_weights(q8_gguf, monkeypatch):
    # Blocks even where the kernel is not the faster choice (a CPU without AVX-512).
    monkeypatch.setattr(model_loading, "runs_fast", lambda int8_activations: True)
    blocks = LLM(str(q8_gguf), **ENGINE, int8_activations=False)
    layer = blocks.engine.runner.model.model.layers[-1]  # KDA, routed experts
    assert isinstance(layer.self_attn.qkv_proj, BlockQuantizedLinear)
    assert isinstance(layer.mlp.experts, BlockQuantizedExperts)
    floats = LLM(str(q8_gguf), **ENGINE, gguf_weights="dequantize")
    for ours, theirs in zip(
        blocks.generate(PROMPTS, greedy_params()),
        floats.generate(PROMPTS, greedy_params()),
        strict=True,
    ):
        assert ours.token_ids == theirs.token_ids
        for mine, reference in zip(ours.logprobs, theirs.logprobs, strict=True):
            assert abs(mine.logprob - reference.logprob) < 1e-3


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        # One number, as other architectures write it: which layers are KDA is unknown.
        ("attention.head_count_kv", 1, "head_count_kv must list the KV heads of each of the 4"),
        ("expert_gating_func", 1, "expert_gating_func is 1; Kimi Linear's router scores"),
    ],
)
def test_inconsistent_kimi_metadata_is_refused_in_one_line(q8_gguf, tmp_path, key, value, message):
    reader = gguf.GGUFReader(q8_gguf)
    broken = tmp_path / "broken.gguf"
    writer = gguf.GGUFWriter(broken, "kimi-linear")
    for name, field in reader.fields.items():
        # The config is refused before any tokenizer is read: the vocabulary is left out.
        if name.startswith(("GGUF.", "tokenizer.")) or name == "general.architecture":
            continue
        if name == f"kimi-linear.{key}":
            writer.add_uint32(name, value)
            continue
        sub_type = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError) as exc_info:
        LLM(str(broken), **ENGINE)
    assert_one_line(exc_info, ModelLoadError)
    assert message in str(exc_info.value)
