"""DeepSeek-V2 and DeepSeek-V3 (latent attention, routed and shared experts) against
transformers: tiny random models saved by transformers (per-expert tensors under Hub names,
sharded), loaded by our loader, give transformers' greedy tokens and logprobs over their
options (q_lora on and off, V2's greedy and group-limited routing, V3's biased group-limited
routing with and without renormalisation, dense layers before sparse ones, interleaved or
half-split rotary, YaRN with mscale), prompts past several blocks, a prefix shared from
the cache and chunked prefill. The paged cache holds one latent vector a token and layer."""

import json

import pytest
import torch
import transformers

from tests.conftest import TINY_FIELDS
from tests.reference import load_reference
from tests.test_bad_input import assert_one_line
from tests.test_engine_equality import assert_matches_reference, greedy_params, random_prompts
from tests.test_moe_models import assert_equal_transformers_with_a_shared_prefix, save_random_moe
from tome import LLM
from tome.engine.kv_cache import kv_bytes_per_token
from tome.errors import ModelLoadError
from tome.models.config import ModelConfig

MLA = dict(kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=24)
COMMON = {
    **TINY_FIELDS,
    **MLA,
    "num_hidden_layers": 3,
    "num_key_value_heads": 4,
    "moe_intermediate_size": 32,
    "num_experts_per_tok": 2,
}
YARN = {
    "rope_type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 256,
    "mscale": 0.707,
    "mscale_all_dim": 0.707,
    "rope_theta": 10000.0,
    "beta_fast": 32,
    "beta_slow": 1,
}
DEEPSEEK_MODELS = {
    "v2_greedy": (
        transformers.DeepseekV2Config,
        dict(
            q_lora_rank=None,
            n_routed_experts=6,
            n_shared_experts=1,
            topk_method="greedy",
            first_k_dense_replace=1,
            routed_scaling_factor=1.5,
        ),
    ),
    "v2_group_limited_q_lora": (
        transformers.DeepseekV2Config,
        dict(
            q_lora_rank=24,
            n_routed_experts=8,
            n_shared_experts=2,
            n_group=4,
            topk_group=2,
            topk_method="group_limited_greedy",
            first_k_dense_replace=0,
        ),
    ),
    "v3": (
        transformers.DeepseekV3Config,
        dict(
            q_lora_rank=24,
            n_routed_experts=8,
            n_shared_experts=1,
            n_group=4,
            topk_group=2,
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
            first_k_dense_replace=1,
        ),
    ),
    "v3_no_q_lora_unnormalised_half_split_rope": (
        transformers.DeepseekV3Config,
        dict(
            q_lora_rank=None,
            n_routed_experts=4,
            n_shared_experts=1,
            n_group=2,
            topk_group=1,
            norm_topk_prob=False,
            rope_interleave=False,
            first_k_dense_replace=2,
        ),
    ),
    "v3_yarn": (
        transformers.DeepseekV3Config,
        dict(
            q_lora_rank=16,
            n_routed_experts=4,
            n_shared_experts=1,
            n_group=1,
            topk_group=1,
            first_k_dense_replace=1,
            rope_parameters=YARN,
            max_position_embeddings=1024,
        ),
    ),
}


def save_tiny_deepseek(name: str, path, tokenizer_dir):
    config_class, extra = DEEPSEEK_MODELS[name]
    config = config_class(**{**COMMON, **extra})
    return save_random_moe(config, path, tokenizer_dir, max_shard_size="300KB")  # sharded


@pytest.fixture(scope="module", params=list(DEEPSEEK_MODELS))
def deepseek_model(request, tmp_path_factory, hf_tokenizer_dir):
    path = tmp_path_factory.mktemp(request.param)
    return save_tiny_deepseek(request.param, path, hf_tokenizer_dir)


def test_greedy_and_logprobs_equal_transformers(deepseek_model):
    assert_equal_transformers_with_a_shared_prefix(deepseek_model)


def test_the_cache_holds_one_latent_vector_per_token_and_layer(deepseek_model):
    config = ModelConfig.from_hf(transformers.AutoConfig.from_pretrained(deepseek_model))
    width = MLA["kv_lora_rank"] + MLA["qk_rope_head_dim"]
    assert kv_bytes_per_token(config, torch.float32) == 3 * width * 4
    llm = LLM(str(deepseek_model), kv_cache_memory=1 << 20)
    pool = llm.engine.runner.kv_pool
    assert {tuple(t.shape[2:]) for t in pool.tensors()} == {(1, width)}
    assert len(pool.tensors()) == 3  # one tensor per layer, K and V alike


def test_kimi_k2_config_loads_as_deepseek_v3(tmp_path, hf_tokenizer_dir):
    path = save_tiny_deepseek("v3", tmp_path, hf_tokenizer_dir)
    reference = load_reference(path)
    config = json.loads((path / "config.json").read_text())
    # As Kimi-K2's own config.json names itself (its code comes by trust_remote_code).
    config.update(
        model_type="kimi_k2", auto_map={"AutoConfig": "configuration_deepseek.DeepseekV3Config"}
    )
    (path / "config.json").write_text(json.dumps(config))
    llm = LLM(str(path), kv_cache_memory=1 << 20)
    prompts = random_prompts([12], seed=5)
    assert_matches_reference(reference, prompts, llm.generate(prompts, greedy_params()))


def test_an_invalid_grouping_is_one_clear_error(tmp_path, hf_tokenizer_dir):
    path = save_tiny_deepseek("v3", tmp_path, hf_tokenizer_dir)
    config = json.loads((path / "config.json").read_text())
    config.update(n_group=3)  # 8 experts do not split into 3 groups
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as exc_info:
        LLM(str(path), kv_cache_memory=1 << 20)
    assert_one_line(exc_info, ModelLoadError)
    assert "n_group=3" in str(exc_info.value)


def test_the_multi_token_prediction_layer_is_skipped_as_transformers_skips_it(
    tmp_path, hf_tokenizer_dir
):
    from safetensors.torch import load_file, save_file

    path = save_tiny_deepseek("v3", tmp_path / "model", hf_tokenizer_dir)
    reference = load_reference(path)
    tensors = {}
    for shard in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(shard))
        shard.unlink()
    (path / "model.safetensors.index.json").unlink()
    # DeepSeek-V3's checkpoints hold its MTP module as the layer after the last.
    last = COMMON["num_hidden_layers"] - 1
    mtp = {
        name.replace(f"layers.{last}.", f"layers.{last + 1}."): t.clone()
        for name, t in tensors.items()
        if name.startswith(f"model.layers.{last}.")
    }
    save_file(
        {**tensors, **mtp, "model.layers.3.eh_proj.weight": torch.zeros(8, 8)},
        path / "model.safetensors",
    )
    llm = LLM(str(path), kv_cache_memory=1 << 20)
    prompts = random_prompts([10], seed=6)
    assert_matches_reference(reference, prompts, llm.generate(prompts, greedy_params()))
