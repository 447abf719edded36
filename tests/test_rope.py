"""Every rope type transformers knows. Our cos/sin equal transformers' rotary embedding below
and above the original window (where dynamic and longrope switch); greedy outputs equal
transformers' for sequences that cross that window; a rope scaling override stretches a
model's window as the same rope_scaling in its config would, and a bad one costs one line."""

import json
from types import SimpleNamespace

import pytest
import torch
import transformers
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from typer.testing import CliRunner

from tests.conftest import make_tiny_model
from tests.reference import load_reference
from tests.test_engine_equality import MAX_NEW, assert_matches_reference, random_prompts
from tome import LLM, SamplingParams
from tome.bench import BenchConfig, run_bench
from tome.bench.hf_runner import load_hf_model
from tome.bench.spec import ModelSpec
from tome.cli import app
from tome.engine.kv_cache import kv_bytes_per_token
from tome.errors import InvalidRequestError
from tome.layers.rotary import RotaryEmbedding, context_window, rope_parameters
from tome.loader import ModelSource
from tome.models.config import ModelConfig

WINDOW = 64  # the tiny models' original window: prompts that cross it stay short
HEAD_DIM = 16  # hidden_size 64 over 4 heads
SHORT_FACTOR = [1.0 + 0.1 * i for i in range(HEAD_DIM // 2)]
LONG_FACTOR = [2.0 + 0.5 * i for i in range(HEAD_DIM // 2)]

# Config fields per rope type, as models ship them.
ROPE_CONFIGS = {
    "default": {"max_position_embeddings": 4 * WINDOW},
    "linear": {
        "max_position_embeddings": WINDOW,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0},
    },
    "dynamic": {
        "max_position_embeddings": WINDOW,
        "rope_scaling": {"rope_type": "dynamic", "factor": 4.0},
    },
    "yarn": {
        "max_position_embeddings": WINDOW,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0},
    },
    "llama3": {
        "max_position_embeddings": 4 * WINDOW,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": WINDOW,
        },
    },
    # Phi-3's way: the stretched window in max_position_embeddings, the original one beside
    # the dict and no factor, so the attention factor follows from the two windows.
    "longrope": {
        "max_position_embeddings": 4 * WINDOW,
        "original_max_position_embeddings": WINDOW,
        "rope_scaling": {
            "type": "longrope",
            "short_factor": SHORT_FACTOR,
            "long_factor": LONG_FACTOR,
        },
    },
}
LENGTHS = (40, WINDOW, WINDOW + 1, 100)  # below, at and above the original window
# Weights large enough that attention is far from uniform, and a small rope base so that
# even the slowest frequencies turn within a few dozen positions: a wrong rotation then
# shows in the outputs (with the defaults, 0.02 and 10000, it barely does).
SENSITIVE = {"initializer_range": 0.2, "rope_theta": 100.0}


def llama_config(**fields) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, **fields)


def reference_cos_sin(config, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' cos/sin for one sequence of `length` tokens in one forward. A fresh
    module each time: dynamic's keeps state from earlier calls."""
    cos, sin = LlamaRotaryEmbedding(config)(torch.zeros(1), torch.arange(length)[None])
    return cos[0], sin[0]


@pytest.mark.parametrize("rope", list(ROPE_CONFIGS))
@pytest.mark.parametrize("length", LENGTHS)
def test_cos_sin_equal_transformers(rope, length):
    config = llama_config(**ROPE_CONFIGS[rope])
    cos, sin = RotaryEmbedding(config, HEAD_DIM).cos_sin(
        torch.arange(length), torch.full((length,), length)
    )
    theirs_cos, theirs_sin = reference_cos_sin(config, length)
    torch.testing.assert_close(cos, theirs_cos, atol=1e-5, rtol=0)
    torch.testing.assert_close(sin, theirs_sin, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rope", ["dynamic", "longrope"])
def test_length_dependent_ropes_switch_past_the_window(rope):
    config = llama_config(**ROPE_CONFIGS[rope])
    rotary = RotaryEmbedding(config, HEAD_DIM)
    positions = torch.arange(40)
    below, _ = rotary.cos_sin(positions, torch.full((40,), WINDOW))
    above, _ = rotary.cos_sin(positions, torch.full((40,), WINDOW + 1))
    assert not torch.allclose(below, above, atol=1e-3)
    torch.testing.assert_close(below, reference_cos_sin(config, WINDOW)[0][:40])
    torch.testing.assert_close(above, reference_cos_sin(config, WINDOW + 1)[0][:40])


@pytest.mark.parametrize("rope", ["dynamic", "longrope"])
def test_one_batch_rotates_each_sequence_for_its_own_length(rope):
    config = llama_config(**ROPE_CONFIGS[rope])
    rotary = RotaryEmbedding(config, HEAD_DIM)
    positions = torch.cat([torch.arange(40), torch.arange(100)])
    lengths = torch.cat([torch.full((40,), 40), torch.full((100,), 100)])
    cos, _ = rotary.cos_sin(positions, lengths)
    torch.testing.assert_close(cos[:40], reference_cos_sin(config, 40)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(cos[40:], reference_cos_sin(config, 100)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("rope", "window"),
    [
        ("default", 4 * WINDOW),
        ("linear", 2 * WINDOW),  # the trained window times the factor
        ("dynamic", 4 * WINDOW),
        ("yarn", 4 * WINDOW),
        ("llama3", 4 * WINDOW),  # these two state the stretched window themselves
        ("longrope", 4 * WINDOW),
    ],
)
def test_context_window_is_the_stretched_window(rope, window):
    assert context_window(llama_config(**ROPE_CONFIGS[rope])) == window


@pytest.mark.parametrize("spelling", ["rope_scaling", "rope_parameters"])
def test_either_config_spelling_is_read(spelling):
    config = SimpleNamespace(
        max_position_embeddings=WINDOW, rope_theta=500.0, **{spelling: {"type": "dynamic"}}
    )
    assert rope_parameters(config) == {
        "type": "dynamic",
        "rope_type": "dynamic",
        "rope_theta": 500.0,
    }


def greedy_params() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True, logprobs=20)


def assert_each_matches_reference(path, prompts, outputs) -> None:
    # A fresh reference per prompt: transformers' dynamic rope keeps the longest length it
    # has seen across calls, which would leak from one prompt into the next.
    for prompt, out in zip(prompts, outputs, strict=True):
        assert_matches_reference(load_reference(path), [prompt], [out])


@pytest.fixture(scope="module", params=list(ROPE_CONFIGS))
def rope_model(request, tmp_path_factory, hf_tokenizer_dir):
    path = tmp_path_factory.mktemp(f"rope_{request.param}")
    return make_tiny_model(
        "llama", path, hf_tokenizer_dir, **ROPE_CONFIGS[request.param], **SENSITIVE
    )


def test_greedy_across_the_window_equals_transformers(rope_model):
    # Below the window in the prompt and past it while decoding; beyond it from the prompt.
    prompts = random_prompts([WINDOW - 4, WINDOW + 6], seed=11)
    outputs = LLM(str(rope_model)).generate(prompts, greedy_params())
    assert_each_matches_reference(rope_model, prompts, outputs)


@pytest.fixture(scope="module", params=["dynamic", "longrope"])
def length_dependent_model(request, tmp_path_factory, hf_tokenizer_dir):
    path = tmp_path_factory.mktemp(f"rope_chunked_{request.param}")
    return make_tiny_model(
        "llama", path, hf_tokenizer_dir, **ROPE_CONFIGS[request.param], **SENSITIVE
    )


def test_chunked_prefill_rotates_like_one_prefill(length_dependent_model):
    # transformers prefills the whole prompt at once: every chunk must use its full length.
    llm = LLM(str(length_dependent_model), max_num_batched_tokens=16, max_num_seqs=4)
    prompts = random_prompts([WINDOW - 4, WINDOW + 6], seed=12)
    outputs = llm.generate(prompts, greedy_params())
    assert_each_matches_reference(length_dependent_model, prompts, outputs)


def test_preemption_recomputes_each_token_as_it_was_first_rotated(length_dependent_model):
    # 19 blocks of 8 tokens: the prompts take them all, so the first sequence to need
    # another block preempts the newest, the one beyond the window. Recomputed later, its
    # prompt is rotated for the prompt's length and each generated token for its own.
    config = ModelConfig.from_hf(transformers.AutoConfig.from_pretrained(length_dependent_model))
    block_bytes = kv_bytes_per_token(config, torch.float32) * 8
    llm = LLM(str(length_dependent_model), block_size=8, kv_cache_memory=19 * block_bytes)
    prompts = random_prompts([33, 33, WINDOW + 6], seed=13)
    outputs = llm.generate(prompts, greedy_params())
    assert llm.engine.scheduler.num_preemptions > 0
    assert_each_matches_reference(length_dependent_model, prompts, outputs)


def test_prefix_cache_shares_keys_only_within_a_rotation_regime(length_dependent_model):
    # Blocks written below the window are rotated the default way; a prompt past the window
    # rotates the same tokens the scaled way, so it must not reuse them. Two prompts past
    # the window share under longrope (one long rotation) but not under dynamic (whose
    # rotation depends on each prompt's exact length).
    llm = LLM(str(length_dependent_model), block_size=8)
    short, tail_a, tail_b = random_prompts([WINDOW - 8, 18, 20], seed=14)
    prompts = [short, short + tail_a, short + tail_b]
    outputs = [llm.generate(prompt, greedy_params())[0] for prompt in prompts]
    assert_each_matches_reference(length_dependent_model, prompts, outputs)
    assert outputs[1].num_cached_tokens == 0
    is_longrope = llm.engine.model_config.hf_config.rope_parameters["rope_type"] == "longrope"
    assert outputs[2].num_cached_tokens == (len(short) if is_longrope else 0)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory, hf_tokenizer_dir):
    """A tiny Llama with no rope scaling and a window of WINDOW tokens."""
    path = tmp_path_factory.mktemp("rope_plain")
    return make_tiny_model(
        "llama", path, hf_tokenizer_dir, max_position_embeddings=WINDOW, **SENSITIVE
    )


def reference_with_rope_scaling(path, rope_scaling: dict):
    """transformers loading the same weights with the rope scaling written into its config."""
    config = transformers.AutoConfig.from_pretrained(path)
    config.rope_parameters = {**rope_scaling, "rope_theta": config.rope_parameters["rope_theta"]}
    return load_reference(path, config=config)


@pytest.mark.parametrize("rope_type", ["yarn", "dynamic"])
def test_override_stretches_the_window_as_the_config_would(plain_model, rope_type):
    override = {"rope_type": rope_type, "factor": 4}
    llm = LLM(str(plain_model), rope_scaling=override, max_model_len=4 * WINDOW)
    assert llm.engine.max_model_len == 4 * WINDOW
    prompts = random_prompts([WINDOW - 4, 3 * WINDOW], seed=14)
    outputs = llm.generate(prompts, greedy_params())
    for prompt, out in zip(prompts, outputs, strict=True):
        reference = reference_with_rope_scaling(plain_model, override)
        assert_matches_reference(reference, [prompt], [out])


def test_override_still_bounds_max_model_len(plain_model):
    with pytest.raises(InvalidRequestError, match="exceeds the model's window of 256"):
        LLM(str(plain_model), rope_scaling={"type": "yarn", "factor": 4}, max_model_len=257)
    with pytest.raises(InvalidRequestError, match="exceeds the model's window of 64"):
        LLM(str(plain_model), max_model_len=WINDOW + 1)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("yarn", "rope_scaling must be a JSON object"),
        ({"factor": 4}, "needs a rope_type among"),
        ({"rope_type": "ntk", "factor": 4}, "needs a rope_type among"),
        ({"rope_type": "default"}, "needs a rope_type among"),
        ({"type": "yarn", "rope_type": "linear", "factor": 4}, "they differ"),
        ({"rope_type": "yarn"}, "needs factor"),
        ({"rope_type": "yarn", "factor": 1}, "factor must be > 1"),
        ({"rope_type": "linear", "factor": 0.5}, "factor must be > 1"),
        ({"rope_type": "yarn", "factor": "4"}, "factor must be a number"),
        ({"rope_type": "yarn", "factor": True}, "factor must be a number"),
        ({"rope_type": "dynamic", "factor": float("nan")}, "factor must be a number"),
        ({"rope_type": "yarn", "factor": 4, "beta": 2}, "does not take beta"),
        ({"rope_type": "llama3", "factor": 4}, "needs high_freq_factor, low_freq_factor"),
        ({"rope_type": "longrope", "factor": 4, "short_factor": [1.0]}, "needs long_factor"),
        (
            {"rope_type": "longrope", "factor": 4, "short_factor": [], "long_factor": [1.0]},
            "short_factor must be a list of numbers",
        ),
        (
            {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 6.5},
            "original_max_position_embeddings must be a whole number",
        ),
    ],
)
def test_bad_override_is_one_clear_line(override, message):
    with pytest.raises(InvalidRequestError, match=message) as exc_info:
        LLM(rope_scaling=override)
    assert "\n" not in exc_info.value.message


def test_longrope_override_needs_factors_for_each_frequency(plain_model):
    override = {"rope_type": "longrope", "factor": 4, "short_factor": [1.0] * 3}
    override["long_factor"] = [2.0] * 3
    with pytest.raises(InvalidRequestError, match="has 3 numbers; this model's heads need 8"):
        LLM(str(plain_model), rope_scaling=override)


def test_override_cannot_replace_the_models_own_scaling(tmp_path, hf_tokenizer_dir):
    path = make_tiny_model("llama", tmp_path, hf_tokenizer_dir, **ROPE_CONFIGS["yarn"])
    with pytest.raises(InvalidRequestError, match="already has yarn rope scaling"):
        LLM(str(path), rope_scaling={"rope_type": "dynamic", "factor": 4})


def test_cli_reads_the_override(plain_model):
    override = json.dumps({"rope_type": "yarn", "factor": 4})
    args = ["run", "Hi", "--model", str(plain_model), "--max-tokens", "2"]
    args += ["--max-model-len", str(4 * WINDOW), "--kv-cache-memory", "32MiB"]
    result = CliRunner().invoke(app, [*args, "--rope-scaling", override])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "--rope-scaling is not valid JSON"),
        ('{"rope_type": "yarn", "factor": 0.5}', "factor must be > 1"),
    ],
)
@pytest.mark.parametrize("command", [["run", "Hi"], ["chat"], ["bench"]])
def test_cli_bad_override_is_one_error_line(command, text, message):
    result = CliRunner().invoke(app, [*command, "--rope-scaling", text])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_bench_runs_transformers_with_the_same_override(plain_model):
    override = {"type": "yarn", "factor": 4}
    spec = ModelSpec(
        "tiny", ModelSource("hf_dir", plain_model), False, "float32", "cpu", rope_scaling=override
    )
    rotary = load_hf_model(spec).model.rotary_emb
    assert rotary.rope_type == "yarn"
    assert rotary.config.rope_parameters["factor"] == 4


def test_bench_checks_prompts_against_the_stretched_window(plain_model):
    # The bench refuses a too-long workload before it starts either side.
    workload = dict(decode_batches=(1,), decode_prompt_len=8, decode_tokens=2)
    with pytest.raises(InvalidRequestError, match="exceeds the model's window of 64"):
        run_bench(BenchConfig(model=str(plain_model), prefill_lengths=(3 * WINDOW,), **workload))
    stretched = BenchConfig(
        model=str(plain_model),
        rope_scaling={"rope_type": "yarn", "factor": 4},
        prefill_lengths=(5 * WINDOW,),
        **workload,
    )
    with pytest.raises(InvalidRequestError, match="exceeds the model's window of 256"):
        run_bench(stretched)
