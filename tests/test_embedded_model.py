"""The embedded SmolLM2 GGUF: our greedy continuation of a chat prompt equals the one
transformers computes from the same file with its own GGUF loader."""

import pytest
import torch

from tests.reference import load_reference, reference_greedy
from tome import LLM, SamplingParams
from tome.loader import embedded_model_path

pytestmark = pytest.mark.slow

NEW_TOKENS = 32
MESSAGES = [{"role": "user", "content": "Write two sentences about the sea and the moon."}]


def test_greedy_chat_equals_transformers_gguf():
    llm = LLM()
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
