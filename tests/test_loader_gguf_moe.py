"""MoE models as GGUF files written by llama.cpp's own converter (3-D ffn_*_exps expert
tensors, ffn_gate_inp routers, Qwen2-MoE's *_shexp shared expert and its gate): loaded by
our loader they give transformers' outputs on the HF folder they were converted from (F32),
and quantized (Q8_0), experts and all kept in blocks, the block kernel's outputs equal the
dequantized weights'."""

import pytest
import torch
import transformers

from tests.llama_cpp_converter import convert
from tests.reference import load_reference
from tests.test_engine_equality import assert_matches_reference, greedy_params, random_prompts
from tests.test_moe_models import COMMON, MOE_MODELS
from tome import LLM
from tome.engine import model_loading
from tome.layers.block_quantized_experts import BlockQuantizedExperts
from tome.layers.block_quantized_linear import BlockQuantizedLinear
from tome.loader.gguf_metadata_cache import converted_metadata_dir

FAMILIES = ["qwen3_moe", "qwen2_moe_shared"]


@pytest.fixture(scope="module", params=FAMILIES)
def hf_and_gguf(request, tmp_path_factory, hf_tokenizer_dir):
    config_class, extra = MOE_MODELS[request.param]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config_class(**{**COMMON, **extra}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gate.weight") or name.endswith("gate_up_proj"):
                param.normal_(0, 0.2)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(hf_tokenizer_dir).save_pretrained(folder)
    return folder, {t: convert(folder, folder.parent / f"{folder.name}-{t}.gguf", t)
                    for t in ("f32", "q8_0")}  # fmt: skip


def test_the_config_states_the_expert_sizes(hf_and_gguf):
    folder, files = hf_and_gguf
    theirs = transformers.AutoConfig.from_pretrained(folder)
    ours = transformers.AutoConfig.from_pretrained(converted_metadata_dir(files["f32"]))
    for field in ("moe_intermediate_size", "shared_expert_intermediate_size", "num_experts"):
        assert getattr(ours, field, None) == getattr(theirs, field, None)


def test_a_float_gguf_equals_transformers_on_the_hf_folder(hf_and_gguf):
    folder, files = hf_and_gguf
    llm = LLM(str(files["f32"]), kv_cache_memory=1 << 20, max_num_batched_tokens=32, max_num_seqs=4)
    prompts = random_prompts([5, 40], seed=7)
    assert_matches_reference(
        load_reference(folder), prompts, llm.generate(prompts, greedy_params())
    )


def test_quantized_blocks_equal_their_dequantized_weights(hf_and_gguf, monkeypatch):
    _, files = hf_and_gguf
    prompts = random_prompts([6, 33], seed=8)
    # Blocks even where the kernel is not the faster choice (a CPU without AVX-512).
    monkeypatch.setattr(model_loading, "runs_fast", lambda: True)
    blocks = LLM(str(files["q8_0"]), kv_cache_memory=1 << 20)
    layer = blocks.engine.runner.model.model.layers[0]
    assert isinstance(layer.self_attn.qkv_proj, BlockQuantizedLinear)
    assert isinstance(layer.mlp.experts, BlockQuantizedExperts)
    floats = LLM(str(files["q8_0"]), kv_cache_memory=1 << 20, gguf_weights="dequantize")
    for ours, theirs in zip(
        blocks.generate(prompts, greedy_params()),
        floats.generate(prompts, greedy_params()),
        strict=True,
    ):
        assert ours.token_ids == theirs.token_ids
        for mine, reference in zip(ours.logprobs, theirs.logprobs, strict=True):
            assert abs(mine.logprob - reference.logprob) < 1e-3
