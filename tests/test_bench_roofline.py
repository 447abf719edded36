"""The roofline of `tome bench` against independent counts: parameters from transformers'
own models built on the meta device, FLOPs from torch's FlopCounterMode over a real tiny
transformers forward, attended pairs from explicit masks."""

import json
from pathlib import Path

import pytest
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from tests.conftest import tiny_config
from tome.bench.context_fit import context_fit
from tome.bench.device_peak import PRESETS, measure_device_peak
from tome.bench.engine_pool import BLOCK_SIZE, PoolPlan
from tome.bench.measure import measure
from tome.bench.report import Report
from tome.bench.results import SideResult, decode_row, prefill_row
from tome.bench.roofline import (
    Roofline,
    attention_flops,
    causal_pairs,
    decode_step_cost,
    layer_weights,
    prefill_cost,
    read_parameters,
    sparse_pairs,
)
from tome.bench.spec import ModelSpec
from tome.bench.targets import issue_targets
from tome.bench.workloads import Workload
from tome.cli import app
from tome.engine.memory_plan import parameter_count
from tome.layers.sparse_prefill import SparsePrefillConfig
from tome.loader import ModelSource
from tome.models.config import ModelConfig

CONFIGS = Path(__file__).parent.parent / "bench" / "configs"
PUBLISHED = ["llama-3.1-8b.json", "qwen2.5-7b-instruct-1m.json"]
GIB = 2**30


def hf_config(name: str) -> transformers.PretrainedConfig:
    fields = json.loads((CONFIGS / name).read_text())
    return transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)


def meta_model(config: transformers.PretrainedConfig) -> transformers.PreTrainedModel:
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameters_match_transformers_models(name):
    config = hf_config(name)
    model = meta_model(config)
    ours = ModelConfig.from_hf(config)
    assert parameter_count(ours) == model.num_parameters()
    embedding = model.get_input_embeddings().weight.numel()
    layers = layer_weights(ours)
    assert read_parameters(ours, layers, 1) == model.num_parameters() - embedding
    linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    lm_head = model.get_output_embeddings().weight.numel()
    assert layers.per_token() == linears - lm_head and layers.experts == 0


def test_a_moe_token_multiplies_by_its_experts_and_a_step_reads_those_picked():
    config = hf_config("qwen3-30b-a3b.json")
    model = meta_model(config)
    ours = ModelConfig.from_hf(config)
    experts = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    # The routers multiply every token too (transformers' are not nn.Linear modules).
    routers = sum(p.numel() for name, p in model.named_parameters() if name.endswith("gate.weight"))
    dense = linears - model.get_output_embeddings().weight.numel() + routers
    layers = layer_weights(ours)
    assert (layers.dense, layers.experts, layers.per_layer, layers.active) == (
        dense,
        experts,
        128,
        8,
    )
    assert layers.per_token() == dense + experts * 8 / 128
    untied = model.num_parameters() - model.get_input_embeddings().weight.numel()
    # One token reads its 8 experts of 128 in each layer; a long prefill reads them all.
    assert read_parameters(ours, layers, 1) == pytest.approx(untied - experts * 120 / 128)
    assert read_parameters(ours, layers, 100_000) == pytest.approx(untied)


def test_latent_attention_attends_over_its_cached_vector():
    ours = ModelConfig.from_hf(hf_config("deepseek-v3.json"))
    # 128 heads, 61 layers, a 576-wide latent as key and as value.
    assert attention_flops(ours, 1) == 4 * 576 * 128 * 61


def test_decode_bytes_are_the_weights_and_every_context():
    config = hf_config("llama-3.1-8b.json")
    model = meta_model(config)
    read = model.num_parameters() - model.get_input_embeddings().weight.numel()
    # K and V per layer, KV head and position, two bytes each in bfloat16.
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * 128 * 2
    ours = ModelConfig.from_hf(config)
    cost = decode_step_cost(ours, layer_weights(ours), 2, kv_per_token, batch=8, context=1000)
    assert cost.bytes == 2 * read + 8 * 1000 * kv_per_token


def tiny_llama() -> tuple[transformers.PreTrainedModel, ModelConfig]:
    config = tiny_config("llama", vocab_size=512)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.eval(), ModelConfig.from_hf(config)


def counted_flops(run) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        run()
    return counter.get_total_flops()


def test_prefill_flops_match_the_flop_counter():
    model, config = tiny_llama()
    n = 48
    ids = torch.randint(0, config.vocab_size, (1, n))
    counted = counted_flops(lambda: model(input_ids=ids, logits_to_keep=1))
    # Eager attention multiplies every (query, key) pair, the masked half too.
    ours = prefill_cost(config, layer_weights(config), 4, 0, n).flops
    assert counted == ours - attention_flops(config, causal_pairs(n)) + attention_flops(
        config, n * n
    )
    assert causal_pairs(n) == int(torch.ones(n, n).tril().sum())


def test_decode_flops_match_the_flop_counter():
    model, config = tiny_llama()
    batch, prompt = 3, 20
    ids = torch.randint(0, config.vocab_size, (batch, prompt))
    with torch.inference_mode():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    step = torch.randint(0, config.vocab_size, (batch, 1))
    counted = counted_flops(lambda: model(input_ids=step, past_key_values=cache, use_cache=True))
    # The new token attends over the prompt and itself.
    assert counted == decode_step_cost(config, layer_weights(config), 4, 0, batch, prompt + 1).flops


def test_sparse_pairs_bound_an_explicit_pattern():
    # Columns and distances chosen apart from each other: the bound is exact but for where
    # a column and a distance meet (the first queries' keys).
    sparse = SparsePrefillConfig(min_context=64, vertical=8, slash=8, sink=4, local=4)
    n = 256
    query, key = torch.arange(n)[:, None], torch.arange(n)[None, :]
    columns = key < sparse.sink + sparse.vertical
    distances = (query - key) < sparse.local + sparse.slash
    exact = int(((key <= query) & (columns | distances)).sum())
    assert exact <= sparse_pairs(n, sparse) <= exact + 24**2
    assert sparse_pairs(32, sparse) == causal_pairs(32)  # below min_context: dense


def test_roofline_decode_on_the_h100_preset_is_bandwidth_bound():
    config = hf_config("llama-3.1-8b.json")
    model = meta_model(config)
    weights = 2 * (model.num_parameters() - model.get_input_embeddings().weight.numel())
    kv_per_token = 2 * 32 * 8 * 128 * 2
    roofline = Roofline(ModelConfig.from_hf(config), 2, kv_per_token, PRESETS["h100-sxm"], 2)
    one_step = 3.0e12 / (weights + 1025 * kv_per_token)
    assert roofline.tokens_per_second(decode_row(1, 1024)) == pytest.approx(one_step)


def synthetic_roofline_report() -> Report:
    _, config = tiny_llama()
    workload = Workload((64,), (1,), (32,), 4, vocab_size=512)
    model = ModelSpec("m", ModelSource("hf_dir", Path("m")), True, "float32", "cpu")
    ours = SideResult("tome", {}, {(1, 32): 10.0}, peak_rss_bytes=2**30)
    ours.out_of_memory.append(prefill_row(64))
    roofline = Roofline(config, 4, 1024, PRESETS["h200"], workload.decode_tokens)
    return Report(model, workload, ours, None, issue_targets(workload), roofline)


def test_report_shows_the_roofline_and_our_share():
    report = synthetic_roofline_report()
    assert report.header[4:6] == ("roofline (tok/s)", "tome / roofline")
    rows = {row[0]: row for row in report.rows()}
    prefill = rows["prefill 64 tokens (tok/s)"]
    assert prefill[1] == "out of memory" and prefill[5] == "-"
    decode = rows["decode batch 1 after 32 (tok/s)"]
    bound = report.roofline.tokens_per_second(decode_row(1, 32))
    assert decode[4] == f"{bound:,.1f}" and decode[5] == f"{10.0 / bound:.0%}"
    assert "H200 (preset): 4.3 TB/s, 790 TFLOP/s" in report.markdown()


def test_context_fit_is_weights_plus_kv_on_80_gib():
    config = hf_config("qwen2.5-7b-instruct-1m.json")
    weights = 2 * meta_model(config).num_parameters()
    # int8: one byte a value plus one float32 scale per token and KV head, for K and V.
    int8_per_token = 2 * 28 * 4 * (128 + 4)
    fit = context_fit(ModelConfig.from_hf(config), "bfloat16")
    rows = {row[0]: row for row in fit.rows}
    assert rows["int8"][2] == f"{(80 * GIB - weights) // int8_per_token:,}"
    assert rows["int8"][3] == "yes"  # the 1M window fits with int8 KV
    assert "computed, not measured" in fit.title


class FakeBench:
    """Prefill of 64 tokens has no room; decode at batch 2 runs out of memory."""

    def prefill_tps(self, prompt):
        return float(len(prompt))

    def decode_tps(self, prompts, max_tokens):
        if len(prompts) == 2 and max_tokens > 2:
            raise torch.OutOfMemoryError("fake")
        return 1.0

    def has_room(self, key):
        return key != prefill_row(64)


def test_measure_skips_rows_without_room_and_stops_at_out_of_memory():
    workload = Workload((32, 64), (1, 2, 4), (16,), 4, vocab_size=100)
    result = measure("fake", FakeBench(), workload)
    assert result.prefill_tps == {32: 32.0}
    assert result.no_room == [prefill_row(64)]
    assert result.decode_tps == {(1, 16): 1.0}
    assert result.out_of_memory == [decode_row(2, 16)]


def test_pool_plan_holds_what_its_blocks_cover():
    pool = PoolPlan(bytes_per_block=100, blocks=10, decode_tokens=8)
    assert pool.holds(prefill_row(10 * BLOCK_SIZE - 1))
    assert not pool.holds(prefill_row(10 * BLOCK_SIZE))  # and the slot for the answer
    assert pool.holds(decode_row(5, 2 * BLOCK_SIZE - 8))
    assert not pool.holds(decode_row(5, 2 * BLOCK_SIZE - 7))


def test_measured_cpu_peak_is_positive():
    peak = measure_device_peak(torch.device("cpu"), torch.float32)
    assert peak.bandwidth > 0 and peak.flops > 0 and "measured" in peak.name


def test_cli_roofline_on_cpu_with_several_decode_prompts(tmp_path):
    config_file = CONFIGS / "tiny-llama.json"
    markdown = tmp_path / "bench.md"
    args = ["bench", "--dummy", str(config_file), "--skip-hf", "--roofline"]
    args += ["--roofline-peak", "h100-sxm", "--prefill-lengths", "32"]
    args += ["--decode-batches", "1", "--decode-prompt-lens", "16,48", "--decode-tokens", "3"]
    result = CliRunner().invoke(app, [*args, "--markdown", str(markdown)])
    assert result.exit_code == 0, result.output
    text = markdown.read_text()
    assert "| roofline (tok/s) | tome / roofline |" in text
    assert "decode batch 1 after 16 (tok/s)" in text and "decode batch 1 after 48" in text
    assert "H100 SXM (preset)" in text
    assert "Longest context on one 80 GiB card" in text


def test_unknown_peak_is_a_one_line_error():
    result = CliRunner().invoke(app, ["bench", "--roofline-peak", "a100"])
    assert result.exit_code == 1
    assert "--roofline-peak must be measure or one of h100-sxm, h200" in result.output
