"""Mixture-of-Experts families against transformers: tiny random Mixtral, Qwen2-MoE and
Qwen3-MoE models saved by transformers (per-expert tensors under Hub names, sharded), loaded
by our loader, give transformers' greedy tokens and logprobs, over routing options (top-k
renormalised or not, a shared expert, dense layers among sparse ones), prompts past several
blocks, a shared prefix from the cache and chunked prefill."""

import pytest
import torch
import transformers

from tests.conftest import TINY_FIELDS
from tests.reference import load_reference
from tests.test_engine_equality import assert_matches_reference, greedy_params, random_prompts
from tome import LLM
from tome.errors import ModelLoadError
from tome.layers import moe
from tome.layers.moe import FusedExperts, softmax_top_k

COMMON = {**TINY_FIELDS, "intermediate_size": 96, "num_hidden_layers": 3, "num_experts_per_tok": 2}
MOE_MODELS = {
    "mixtral": (transformers.MixtralConfig, dict(num_local_experts=5)),
    "qwen2_moe_shared": (
        transformers.Qwen2MoeConfig,
        dict(num_experts=6, moe_intermediate_size=32, shared_expert_intermediate_size=80),
    ),
    "qwen2_moe_dense_layers": (
        transformers.Qwen2MoeConfig,
        dict(
            num_experts=4,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            norm_topk_prob=True,
            decoder_sparse_step=2,
            mlp_only_layers=[2],
        ),
    ),
    "qwen3_moe": (
        transformers.Qwen3MoeConfig,
        dict(num_experts=6, moe_intermediate_size=32, norm_topk_prob=True, head_dim=32),
    ),
    "qwen3_moe_unnormalised": (
        transformers.Qwen3MoeConfig,
        dict(num_experts=4, moe_intermediate_size=32, norm_topk_prob=False, num_experts_per_tok=3),
    ),
}


def save_random_moe(config, path, tokenizer_dir, **save_args):
    """A model of `config` with random weights, saved by transformers with a tokenizer.
    Its routers prefer some experts, as trained ones do, so routing is not a tie; a
    selection bias (DeepSeek-V3's) is large enough to change choices."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gate.weight") or name.endswith("gate_up_proj"):
                param.normal_(0, 0.2)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(torch.linspace(-0.2, 0.2, buffer.numel()))
    model.save_pretrained(path, **save_args)
    transformers.AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


def save_tiny_moe(name: str, path, tokenizer_dir, **save_args):
    config_class, extra = MOE_MODELS[name]
    return save_random_moe(config_class(**{**COMMON, **extra}), path, tokenizer_dir, **save_args)


def assert_equal_transformers_with_a_shared_prefix(path) -> None:
    """Greedy tokens and logprobs as transformers gives them for prompts past several
    blocks, chunked, then for a second batch whose 48-token prefix comes from the cache."""
    reference = load_reference(path)
    llm = LLM(str(path), max_num_batched_tokens=32, max_num_seqs=4)
    prompts = random_prompts([5, 40, 70], seed=3)
    assert_matches_reference(reference, prompts, llm.generate(prompts, greedy_params()))
    shared = random_prompts([9, 21], seed=4, prefix=prompts[2][:48])
    outputs = llm.generate(shared, greedy_params())
    assert all(out.num_cached_tokens >= 32 for out in outputs)
    assert_matches_reference(reference, shared, outputs)


@pytest.fixture(scope="module", params=list(MOE_MODELS))
def moe_model(request, tmp_path_factory, hf_tokenizer_dir):
    path = tmp_path_factory.mktemp(request.param)
    # Several shards, as on the Hub.
    return save_tiny_moe(request.param, path, hf_tokenizer_dir, max_shard_size="300KB")


def test_sharded_hub_names_are_what_we_load(moe_model):
    index = (moe_model / "model.safetensors.index.json").read_text()
    assert ".experts.0." in index  # one tensor per expert, as on the Hub


def test_greedy_and_logprobs_equal_transformers(moe_model):
    assert_equal_transformers_with_a_shared_prefix(moe_model)


def test_experts_equal_a_loop_over_tokens():
    torch.manual_seed(1)
    experts = FusedExperts(num_experts=5, hidden_size=16, intermediate_size=8)
    torch.nn.init.normal_(experts.gate_up_proj)
    torch.nn.init.normal_(experts.down_proj)
    x = torch.randn(11, 16)
    weights, ids = softmax_top_k(torch.randn(11, 5), 2, renormalize=True)
    expected = torch.zeros_like(x)
    for t in range(11):
        for weight, e in zip(weights[t], ids[t], strict=True):
            gate, up = (x[t] @ experts.gate_up_proj[e].T).chunk(2)
            expected[t] += weight * (torch.nn.functional.silu(gate) * up) @ experts.down_proj[e].T
    torch.testing.assert_close(experts(x, weights, ids), expected, rtol=1e-5, atol=1e-5)


def test_a_checkpoint_missing_an_expert_is_one_clear_error(moe_model, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = {}
    for shard in sorted(moe_model.glob("*.safetensors")):
        tensors.update(load_file(shard))
    dropped = next(name for name in tensors if ".experts.1." in name)
    del tensors[dropped]
    for item in moe_model.iterdir():
        if item.suffix == ".json" and "index" not in item.name:
            (tmp_path / item.name).write_bytes(item.read_bytes())
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="lacks 1 tensors"):
        LLM(str(tmp_path), kv_cache_memory=1 << 20)


def test_bfloat16_experts_widened_on_the_cpu_equal_the_bfloat16_products(monkeypatch):
    """An expert with many rows multiplies in float32 where the CPU lacks bfloat16 dot
    products; either way the products accumulate in float32 and round once."""
    torch.manual_seed(3)
    experts = FusedExperts(num_experts=3, hidden_size=64, intermediate_size=48)
    torch.nn.init.normal_(experts.gate_up_proj, std=0.2)
    torch.nn.init.normal_(experts.down_proj, std=0.2)
    experts = experts.to(torch.bfloat16)
    x = torch.randn(40, 64).to(torch.bfloat16)
    weights, ids = softmax_top_k(torch.randn(40, 3), 2, renormalize=True)
    outputs = {}
    for widened in (True, False):
        monkeypatch.setattr(moe, "_widens_bfloat16", lambda x, widened=widened: widened)
        outputs[widened] = experts(x, weights, ids)
    torch.testing.assert_close(outputs[True], outputs[False])
