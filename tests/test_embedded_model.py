"""The embedded SmolLM2 GGUF: our greedy continuation of a chat prompt equals the one
transformers computes from the same file with its own GGUF loader, whether we compute from
the file's Q4_1/Q8_0 blocks or expand them to float32 at load as transformers does."""

import pytest
import torch

from tests.reference import load_reference, reference_greedy
from tome import LLM, SamplingParams
from tome.kernels.block_quantized_matmul import runs_fast
from tome.layers.block_quantized_linear import BlockQuantizedLinear
from tome.loader import embedded_model_path

pytestmark = pytest.mark.slow

NEW_TOKENS = 32
MESSAGES = [{"role": "user", "content": "Write two sentences about the sea and the moon."}]


@pytest.mark.parametrize("gguf_weights", ["auto", "dequantize"])
def test_greedy_chat_equals_transformers_gguf(gguf_weights):
    llm = LLM(gguf_weights=gguf_weights)
    in_blocks = isinstance(llm.engine.runner.model.lm_head, BlockQuantizedLinear)
    assert in_blocks == (gguf_weights == "auto" and runs_fast(int8_activations=False))
    [ours] = llm.chat(
        MESSAGES, SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    )
    path = embedded_model_path()
    reference = load_reference(path.parent, gguf_file=path.name, dtype=torch.float32)
    prompt = llm.tokenizer.apply_chat_template(MESSAGES)
    tokens, _ = reference_greedy(reference, prompt, NEW_TOKENS)
    assert ours.prompt_token_ids == prompt
    assert ours.token_ids == tokens
    assert ours.text.strip()
    # What /v1/models reports: the type the package names its file by.
    assert path.name.endswith(".Q4_1.gguf")
    assert llm.engine.weight_quantization == "gguf Q4_1"
