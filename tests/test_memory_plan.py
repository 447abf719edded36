"""The memory plan and the KV budget: parameter counts equal transformers', KV bytes per
dtype, weight bytes equal to what a model loaded in each quantization scheme holds, `tome
plan`, a pool sized as a fraction of free memory, and a 32k-token prefill whose memory
grows with the chunk, not with the square of the prompt."""

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn
from typer.testing import CliRunner

from tests.conftest import TINY_CONFIGS, make_tiny_model, tiny_config
from tests.test_cli import assert_one_error_line
from tome import LLM, SamplingParams
from tome.cli import app
from tome.cli_options import parse_kv_memory
from tome.engine import kv_cache
from tome.engine.config import EngineConfig
from tome.engine.memory_plan import (
    load_plan_config,
    parameter_count,
    plan_device,
    plan_memory,
    weight_bytes,
)
from tome.engine.model_loading import load_model
from tome.errors import InvalidRequestError, KVCacheCapacityError
from tome.kernels.block_quantized_matmul import BlockQuantizedWeight, PackedWeight
from tome.kernels.float8_matmul import Float8Weight
from tome.layers.rotary import RotaryEmbedding
from tome.layers.torch_attention_backend import MASK_ELEMENTS
from tome.layers.weight_quantization import WEIGHT_QUANTIZATIONS
from tome.memory_plan_table import format_bytes
from tome.models.config import ModelConfig

REPO = Path(__file__).resolve().parent.parent


def tiny_hf_config(kind: str) -> transformers.PretrainedConfig:
    return tiny_config(kind, vocab_size=1000)


def transformers_parameter_count(hf_config: transformers.PretrainedConfig) -> int:
    model = transformers.AutoModelForCausalLM.from_config(hf_config)
    return sum(p.numel() for p in model.parameters())  # a tied weight is counted once


@pytest.mark.parametrize("kind", list(TINY_CONFIGS))
def test_parameter_count_equals_transformers(kind):
    hf_config = tiny_hf_config(kind)
    assert parameter_count(ModelConfig.from_hf(hf_config)) == transformers_parameter_count(
        hf_config
    )


MOE_SHAPE = dict(
    vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2,
)  # fmt: skip


@pytest.mark.parametrize(
    "hf_config",
    [
        transformers.Qwen3MoeConfig(
            **MOE_SHAPE, num_experts=6, moe_intermediate_size=32, head_dim=16
        ),
        transformers.Qwen2MoeConfig(
            **{**MOE_SHAPE, "num_hidden_layers": 3},
            num_experts=4,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            mlp_only_layers=[1],
        ),
        transformers.MixtralConfig(**MOE_SHAPE, intermediate_size=96, num_local_experts=5),
    ],
    ids=["qwen3_moe", "qwen2_moe", "mixtral"],
)
def test_a_moe_model_counts_every_expert(hf_config):
    assert parameter_count(ModelConfig.from_hf(hf_config)) == transformers_parameter_count(
        hf_config
    )


def test_plan_adds_weights_and_kv_per_dtype():
    hf_config = tiny_hf_config("llama")
    config = ModelConfig.from_hf(hf_config)
    weights = 2 * transformers_parameter_count(hf_config)  # bfloat16
    # Per token: 2 layers x (K and V) x 2 KV heads x 16 dims, in 2 bytes, or in 1 byte
    # plus a 4-byte scale per layer, K or V, and head.
    bf16_token, int8_token = 2 * 2 * 2 * 16 * 2, 2 * 2 * 2 * (16 + 4)
    tokens = 4096
    memory = weights + int8_token * tokens  # room for int8's KV exactly, not for bfloat16's
    plan = plan_memory(config, "bfloat16", tokens, memory)
    assert plan.weight_bytes == weights
    rows = {kv.kv_dtype: kv for kv in plan.kv}
    assert list(rows) == ["bfloat16", "float16", "int8", "fp8"]
    assert rows["bfloat16"].bytes_per_token == bf16_token
    assert rows["bfloat16"].kv_bytes == bf16_token * tokens
    assert not rows["bfloat16"].fits
    assert rows["bfloat16"].max_tokens == int8_token * tokens // bf16_token
    for name in ("int8", "fp8"):
        assert rows[name].bytes_per_token == int8_token
        assert rows[name].fits and rows[name].max_tokens == tokens
    assert not plan_memory(config, "bfloat16", tokens, memory - 1).kv[2].fits
    float32_plan = plan_memory(config, "float32", tokens, memory)
    assert float32_plan.weight_bytes == 2 * weights
    assert float32_plan.kv[0].kv_dtype == "float32"
    assert float32_plan.kv[0].bytes_per_token == 2 * bf16_token


def test_plan_with_weights_over_memory_fits_nothing():
    config = ModelConfig.from_hf(tiny_hf_config("qwen3"))
    plan = plan_memory(config, "bfloat16", 16, 1000)
    assert all(not kv.fits and kv.max_tokens == 0 for kv in plan.kv)


def held_bytes(model: nn.Module) -> int:
    """Bytes of every tensor the loaded model's modules hold (parameters, buffers, plain
    tensor attributes, the tensors of quantized weights, in lists too), each storage once
    and whole: a view keeps its whole storage alive, a tied head shares the embedding's.
    The rotary tables are left out: computed from the config, they are not weights."""
    storages: dict[int, int] = {}

    def visit(value: object) -> None:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(value, BlockQuantizedWeight | PackedWeight | Float8Weight):
            for field in dataclasses.fields(value):
                visit(getattr(value, field.name))
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item)

    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            continue
        for value in [*module._parameters.values(), *module._buffers.values()]:
            visit(value)
        for value in vars(module).values():
            visit(value)
    return sum(storages.values())


@pytest.fixture(scope="module", params=["llama", "llama_tied"])
def llama_128(request, tmp_path_factory, hf_tokenizer_dir) -> Path:
    """A tiny Llama whose layers' inputs (128, 256) are multiples of every scheme's."""
    path = tmp_path_factory.mktemp(request.param)
    return make_tiny_model(
        request.param, path, hf_tokenizer_dir, hidden_size=128, intermediate_size=256
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("quantization", [None, *WEIGHT_QUANTIZATIONS])
def test_planned_weight_bytes_are_what_the_loaded_model_holds(llama_128, quantization, dtype):
    """Each scheme in the layout this CPU loads it in (float32: the block kernel's panels
    where it runs; bfloat16: torch's int4/int8 packs), exactly."""
    config = EngineConfig(model=str(llama_128), dtype=dtype, quantization=quantization)
    loaded = load_model(config)
    planned = weight_bytes(
        loaded.config, loaded.dtype, torch.device("cpu"), quantization, quantize_head=True
    )
    assert planned == held_bytes(loaded.model)


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config_only")
    tiny_hf_config("llama_tied").save_pretrained(path)
    return path


def test_plan_command_prints_the_table(config_dir):
    parameters = transformers_parameter_count(tiny_hf_config("llama_tied"))
    args = ["plan", "--dummy", str(config_dir), "--max-model-len", "4096"]
    result = CliRunner().invoke(app, [*args, "--device-memory", "1GiB"])
    assert result.exit_code == 0, result.output
    assert f"{parameters:,} parameters" in result.stdout
    for text in ("KV cache for 4,096 tokens", "bfloat16", "int8", "fp8", "yes"):
        assert text in result.stdout


def plan_weights(output: str) -> tuple[str, float]:
    """The weights' line `tome plan` prints (rich wraps it) and their size in GiB."""
    line = " ".join(output.split()).split("; ")[0]
    return line, float(re.fullmatch(r"weights: .* = ([0-9.]+) GiB", line).group(1))


def test_plan_command_counts_quantized_weights():
    args = ["plan", "--dummy", str(REPO / "bench/configs/llama-3.1-8b.json")]
    args += ["--max-model-len", "4096", "--device-memory", "80GiB"]
    lines = []
    for flags in [(), ("--quantization", "int8"), ("--quantization", "int4")]:
        result = CliRunner().invoke(app, [*args, *flags])
        assert result.exit_code == 0, result.output
        lines.append(plan_weights(result.stdout))
    (_, float_size), (_, int8_size), (int4_line, int4_size) = lines
    assert int4_size < int8_size < float_size
    assert "parameters in bfloat16 quantized to int4 (groups of 32) =" in int4_line


# Kimi-Linear-48B-A3B's own layers: 20 KDA layers, each with a [32, 128, 128] float32 state
# and its convolution's last 3 inputs of 3 x 4096 channels in bfloat16, and 7 latent
# attention layers of 576 values a token.
KIMI_STATE_BYTES = 20 * (32 * 128 * 128 * 4 + 3 * 3 * 4096 * 2)
KIMI_KV_BYTES_PER_TOKEN = 7 * 576 * 2


@pytest.mark.parametrize(
    ("flags", "seats", "checkpoints"),
    [((), 64, 64), (("--max-num-seqs", "8", "--max-state-checkpoints", "2"), 8, 2)],
)
def test_plan_command_counts_a_hybrid_models_state_pool_and_shows_it_beside_kv(
    flags, seats, checkpoints
):
    args = ["plan", "--dummy", str(REPO / "bench/configs/kimi-linear-48b-a3b.json")]
    args += ["--max-model-len", "131072", "--device-memory", "141GiB", *flags]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    pool = (seats + checkpoints) * KIMI_STATE_BYTES
    assert "49,122,681,728 parameters" in text
    assert (
        f"recurrent state: {format_bytes(KIMI_STATE_BYTES)} a sequence, whatever its length; "
        f"{seats} running sequences and {checkpoints} prefix-cache checkpoints hold "
        f"{format_bytes(pool)}"
    ) in text
    weights = weight_bytes(load_plan_config(None, args[2]), torch.bfloat16, plan_device())
    max_tokens = (141 * 2**30 - weights - pool) // KIMI_KV_BYTES_PER_TOKEN
    kv = 131072 * KIMI_KV_BYTES_PER_TOKEN
    total = format_bytes(weights + pool + kv)
    assert f"│ bfloat16 │ 8,064 │ {format_bytes(kv)} │ {total} │ yes │ {max_tokens:,} │" in text
    # One sequence: the state is a few percent of its KV at 128k tokens, less at 1M.
    for tokens in (131072, 1048576):
        kv = tokens * KIMI_KV_BYTES_PER_TOKEN
        share = KIMI_STATE_BYTES / (KIMI_STATE_BYTES + kv)
        row = (
            f"│ {tokens:,} │ {format_bytes(kv)} │ {format_bytes(KIMI_STATE_BYTES)} │ {share:.1%} │"
        )
        assert row in text


@pytest.mark.parametrize(
    "bad",
    [
        ["--max-num-seqs", "0"],
        ["--max-state-checkpoints", "-1"],
        ["--dtype", "int3"],
        ["--quantization", "int3"],
        ["--device-memory", "12XB"],
        ["--max-model-len", "0"],
        ["--dummy", "/no/such/config.json"],
        ["some-model", "--dummy", "config.json"],
    ],
)
def test_plan_bad_flags_give_one_error_line(config_dir, bad):
    args = ["plan", *bad] if "--dummy" in bad else ["plan", "--dummy", str(config_dir), *bad]
    assert_one_error_line(CliRunner().invoke(app, args))


@pytest.mark.parametrize(("text", "value"), [("0.5", 0.5), (" 1.0 ", 1.0), ("2GiB", 2 * 2**30)])
def test_kv_memory_is_a_fraction_or_a_size(text, value):
    assert parse_kv_memory(text) == value


@pytest.mark.parametrize("text", ["1.5", "0.0", "-0.5"])
def test_kv_memory_rejects_fractions_out_of_range(text):
    with pytest.raises(InvalidRequestError):
        parse_kv_memory(text)


@pytest.mark.parametrize("value", [0, -1, 0.0, 1.5, True])
def test_engine_config_rejects_bad_kv_memory(value):
    with pytest.raises(InvalidRequestError, match="kv_cache_memory"):
        EngineConfig(kv_cache_memory=value)


def test_a_fraction_of_free_memory_sizes_the_pool(tiny_llama, monkeypatch):
    # The tiny Llama in float32: 2 layers x (K and V) x 2 KV heads x 16 dims x 4 bytes
    # per token, blocks of 16 tokens.
    block_bytes = 2 * 2 * 2 * 16 * 4 * 16
    available = 100 * block_bytes + 5000
    monkeypatch.setattr(kv_cache, "free_memory", lambda device: available)
    for fraction in (0.25, 0.5):
        llm = LLM(str(tiny_llama), kv_cache_memory=fraction)
        assert llm.engine.block_manager.num_blocks == int(available * fraction) // block_bytes
    assert llm.engine.kv_capacity_tokens == 50 * 16
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    with pytest.raises(KVCacheCapacityError):
        llm.generate(list(range(3, 900)), params)
    assert len(llm.generate(list(range(3, 40)), params)[0].token_ids) == 4


PREFILL_CHILD = """
import json, random, sys, threading, time
import psutil
from tome import LLM, SamplingParams

path, tokens, chunk, pool = sys.argv[1], *map(int, sys.argv[2:])
llm = LLM(path, max_num_batched_tokens=chunk, max_num_seqs=1, kv_cache_memory=pool)
rng = random.Random(0)
params = SamplingParams(temperature=0.0, max_tokens=1)
llm.generate([rng.randrange(3, 49152) for _ in range(2 * chunk)], params)  # first-use costs
process, peak, done = psutil.Process(), [0], threading.Event()
def sample():  # ru_maxrss would also count the warm-up's peak
    while not done.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.002)
before = process.memory_info().rss
sampler = threading.Thread(target=sample)
sampler.start()
out = llm.generate([rng.randrange(3, 49152) for _ in range(tokens)], params)
done.set()
sampler.join()
print(json.dumps({"growth": peak[0] - before, "generated": len(out[0].token_ids)}))
"""


def test_32k_prefill_memory_grows_with_the_chunk_not_the_square(tmp_path, hf_tokenizer_dir):
    """Peak RSS, sampled in a child process (tracemalloc does not see torch's allocations),
    while a 32,000-token prompt is prefilled in chunks of 8,192."""
    path = make_tiny_model(
        "llama", tmp_path, hf_tokenizer_dir, num_hidden_layers=1, max_position_embeddings=32768
    )
    tokens, chunk = 32000, 8192
    pool = 32768 * 2 * 2 * 16 * 4  # 1 layer x (K and V) x 2 KV heads x 16 dims x 4 bytes
    child = [sys.executable, "-c", PREFILL_CHILD, str(path), str(tokens), str(chunk), str(pool)]
    result = subprocess.run(child, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["generated"] == 1
    # The chunk's queries go through attention a slice of rows at a time, each slice's
    # causal mask within MASK_ELEMENTS (SDPA's CPU kernel holds about 8 bytes an element:
    # the bool mask, a float copy, its buffers), whatever the context length. Beside it the
    # pool fills, and the chunk's activations (c x hidden, c x intermediate) are small:
    # 64 MiB covers them.
    bound = pool + 10 * MASK_ELEMENTS + 64 * 2**20
    assert measured["growth"] < bound
    # A whole chunk's mask (c x n) would not fit the bound; one n x n float32 score matrix
    # would need 4 GiB per head.
    assert bound < 5 * chunk * tokens < tokens**2 * 4
