"""Greedy generation and logprobs from Hugging Face transformers, the reference."""

from pathlib import Path

import torch
import transformers


def load_reference(path: Path, **kwargs) -> transformers.PreTrainedModel:
    kwargs.setdefault("dtype", torch.float32)
    return transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


@torch.inference_mode()
def reference_greedy(model, prompt_ids: list[int], max_new_tokens: int):
    """Greedy tokens (never stopping at EOS) and the log-softmax over the vocabulary at
    each generated position, from transformers' own forward with its KV cache."""
    out = model(torch.tensor([prompt_ids]), use_cache=True)
    tokens, logprobs = [], []
    for _ in range(max_new_tokens):
        logits = out.logits[0, -1].float()
        logprobs.append(torch.log_softmax(logits, dim=-1))
        tokens.append(int(logits.argmax()))
        out = model(
            torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True
        )
    return tokens, logprobs
