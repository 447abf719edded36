"""The C++ decode pass (models/llama_cpu_decode.py): a decode step through all layers in one
call must give what the layer-by-layer forward gives, bit for bit, for every Llama-family
variant it takes (q/k/v bias, per-head q/k norms), cache dtype, activation rounding and
instruction set; and it must decline what it does not take. (Its outputs against
transformers: test_weight_quantization.py's whole-model tests now decode through it.)"""

import pytest

from tests.conftest import make_tiny_model
from tests.test_moe_models import save_tiny_moe
from tome import LLM, SamplingParams
from tome.kernels import cpu_decode_layers
from tome.layers.block_quantized_linear import set_int8_activations
from tome.layers.layer_kernels import LAYER_OPS_ENV

pytestmark = pytest.mark.skipif(
    cpu_decode_layers.entry_points() is None, reason="the C++ kernels need a compiler"
)

PROMPTS = [list(range(5, 45)), list(range(300, 307)), list(range(1000, 1090))]


def save_family(kind: str, tmp_path_factory, tokenizer_dir):
    # Inputs of 128 and 256: whole blocks of 32 for the block kernel.
    path = tmp_path_factory.mktemp(kind)
    return make_tiny_model(kind, path, tokenizer_dir, hidden_size=128, intermediate_size=256)


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def family_model(request, tmp_path_factory, hf_tokenizer_dir):
    return save_family(request.param, tmp_path_factory, hf_tokenizer_dir)


@pytest.fixture(scope="module")
def llama_model(tmp_path_factory, hf_tokenizer_dir):
    return save_family("llama", tmp_path_factory, hf_tokenizer_dir)


def generate_both_ways(llm: LLM) -> tuple[list, list]:
    """Greedy answers with their logprobs through the C++ pass, then through the layers,
    checking the pass really served the decode steps."""
    runner = llm.engine.runner
    served = []
    run = runner.cpu_decode.run
    runner.cpu_decode.run = lambda *args: served.append(1) or run(*args)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=2)
    fused = llm.generate(PROMPTS, params)
    assert len(served) >= 11
    runner.cpu_decode = None
    return fused, llm.generate(PROMPTS, params)


def assert_same(fused: list, layered: list) -> None:
    for ours, theirs in zip(fused, layered, strict=True):
        assert ours.token_ids == theirs.token_ids
        assert [t.logprob for t in ours.logprobs] == [t.logprob for t in theirs.logprobs]
        assert [t.top for t in ours.logprobs] == [t.top for t in theirs.logprobs]


@pytest.mark.parametrize(
    ("kv_cache_dtype", "quantization", "int8_activations"),
    [("auto", "int4", False), ("bfloat16", "int8", True)],
)
def test_pass_equals_the_layers_bit_for_bit(
    family_model, kv_cache_dtype, quantization, int8_activations
):
    llm = LLM(
        str(family_model),
        quantization=quantization,
        kv_cache_dtype=kv_cache_dtype,
        int8_activations=int8_activations,
        enable_prefix_caching=False,
    )
    assert_same(*generate_both_ways(llm))


@pytest.mark.usefixtures("each_cpu_isa")
def test_pass_equals_the_layers_on_every_instruction_set(llama_model):
    llm = LLM(str(llama_model), quantization="int4", enable_prefix_caching=False)
    assert_same(*generate_both_ways(llm))


def test_switching_8_bit_activations_reaches_the_pass(llama_model):
    llm = LLM(str(llama_model), quantization="int8", enable_prefix_caching=False)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=1)
    before = llm.generate(PROMPTS, params)
    set_int8_activations(llm.engine.runner.model, True)
    rounded = llm.generate(PROMPTS, params)
    llm.engine.runner.cpu_decode = None
    assert_same(rounded, llm.generate(PROMPTS, params))
    assert [t.logprob for t in before[0].logprobs] != [t.logprob for t in rounded[0].logprobs]


def test_declines_what_it_does_not_take(llama_model, tmp_path, hf_tokenizer_dir, monkeypatch):
    def pass_of(**options):
        return LLM(str(options.pop("path", llama_model)), **options).engine.runner

    assert pass_of(quantization="int4").cpu_decode is not None
    assert pass_of().cpu_decode is None  # float32 weights: their products are BLAS's
    assert pass_of(quantization="int4", kv_cache_dtype="int8").cpu_decode is None
    moe = save_tiny_moe("qwen3_moe", tmp_path / "moe", hf_tokenizer_dir)
    assert pass_of(path=moe, quantization="int4").cpu_decode is None
    monkeypatch.setenv(LAYER_OPS_ENV, "torch")
    assert pass_of(quantization="int4").cpu_decode is None
