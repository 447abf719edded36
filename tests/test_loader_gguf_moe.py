"""MoE models as GGUF files written by llama.cpp's own converter: 3-D ffn_*_exps expert
tensors, ffn_gate_inp routers, shared experts (*_shexp) and Qwen2-MoE's shared-expert
gate, Mixtral as a `llama` file with experts, DeepSeek-V2/V3 as `deepseek2` (latent
attention's attn_kv_a_mqa, W_UK and W_UV split as attn_k_b / attn_v_b, the router's
exp_probs_b, YaRN). Loaded by our loader, an F32 file gives transformers' outputs on the
HF folder it was converted from; a Q8_0 file, experts and all kept in blocks, gives the
outputs of its own weights dequantized."""

import pytest
import transformers

from tests.llama_cpp_converter import convert
from tests.reference import load_reference
from tests.test_deepseek_models import save_tiny_deepseek
from tests.test_engine_equality import assert_matches_reference, greedy_params, random_prompts
from tests.test_moe_models import MOE_MODELS, save_tiny_moe
from tome import LLM
from tome.engine import model_loading
from tome.layers.block_quantized_experts import BlockQuantizedExperts
from tome.layers.block_quantized_linear import BlockQuantizedLinear
from tome.loader.gguf_metadata_cache import converted_metadata_dir

FAMILIES = ["qwen3_moe", "qwen2_moe_shared", "mixtral", "v3", "v2_group_limited_q_lora", "v3_yarn"]
QUANTIZED = ["qwen3_moe", "v3"]
CONFIG_FIELDS = (
    "moe_intermediate_size", "shared_expert_intermediate_size", "num_experts",
    "num_local_experts", "n_routed_experts", "n_shared_experts", "first_k_dense_replace",
    "kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "v_head_dim", "n_group", "topk_group",
    "routed_scaling_factor", "norm_topk_prob",
)  # fmt: skip


def save_hf(family: str, folder, tokenizer_dir):
    if family in MOE_MODELS:
        return save_tiny_moe(family, folder, tokenizer_dir)
    return save_tiny_deepseek(family, folder, tokenizer_dir)


@pytest.fixture(scope="module", params=FAMILIES)
def float_gguf(request, tmp_path_factory, hf_tokenizer_dir):
    folder = save_hf(request.param, tmp_path_factory.mktemp(request.param), hf_tokenizer_dir)
    return folder, convert(folder, folder.parent / f"{folder.name}-f32.gguf", "f32")


@pytest.fixture(scope="module", params=QUANTIZED)
def q8_gguf(request, tmp_path_factory, hf_tokenizer_dir):
    folder = save_hf(request.param, tmp_path_factory.mktemp(request.param), hf_tokenizer_dir)
    return convert(folder, folder.parent / f"{folder.name}-q8_0.gguf", "q8_0")


def test_the_config_states_what_the_hf_one_does(float_gguf):
    folder, gguf_file = float_gguf
    theirs = transformers.AutoConfig.from_pretrained(folder)
    ours = transformers.AutoConfig.from_pretrained(converted_metadata_dir(gguf_file))
    assert type(ours) is type(theirs)
    for field in CONFIG_FIELDS:
        assert getattr(ours, field, None) == getattr(theirs, field, None), field


def test_a_float_gguf_equals_transformers_on_the_hf_folder(float_gguf):
    folder, gguf_file = float_gguf
    llm = LLM(str(gguf_file), kv_cache_memory=1 << 20, max_num_batched_tokens=32, max_num_seqs=4)
    prompts = random_prompts([5, 40], seed=7)
    assert_matches_reference(
        load_reference(folder), prompts, llm.generate(prompts, greedy_params())
    )


def test_quantized_blocks_equal_their_dequantized_weights(q8_gguf, monkeypatch):
    prompts = random_prompts([6, 33], seed=8)
    # Blocks even where the kernel is not the faster choice (a CPU without AVX-512).
    monkeypatch.setattr(model_loading, "runs_fast", lambda int8_activations: True)
    blocks = LLM(str(q8_gguf), kv_cache_memory=1 << 20, int8_activations=False)
    layer = blocks.engine.runner.model.model.layers[-1]
    assert isinstance(layer.self_attn.o_proj, BlockQuantizedLinear)
    assert isinstance(layer.mlp.experts, BlockQuantizedExperts)
    floats = LLM(str(q8_gguf), kv_cache_memory=1 << 20, gguf_weights="dequantize")
    for ours, theirs in zip(
        blocks.generate(prompts, greedy_params()),
        floats.generate(prompts, greedy_params()),
        strict=True,
    ):
        assert ours.token_ids == theirs.token_ids
        for mine, reference in zip(ours.logprobs, theirs.logprobs, strict=True):
            assert abs(mine.logprob - reference.logprob) < 1e-3
