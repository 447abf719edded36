"""How much int8 and fp8 KV caches change the embedded SmolLM2's answers, against a float32
cache: greedy token agreement (matching tokens up to each answer's first divergence) and
the absolute logit difference at the last prompt position.

    python bench/kv_dtype_accuracy.py --prompts 8 --max-tokens 64 [--kv-dtypes int8,fp8]

CPU heavy: it loads the model once per KV dtype and generates every answer three times."""

import argparse
import gc

import torch
from rich.console import Console
from rich.table import Table

from tome import LLM, SamplingParams

PROMPTS = [
    "Explain in three sentences why the sky is blue.",
    "Write a short poem about a lighthouse keeper.",
    "What is the capital of Australia, and why was it chosen?",
    "List five uses of a paperclip.",
    "Summarize the plot of Romeo and Juliet in one paragraph.",
    "How does a binary search work? Give an example.",
    "Translate 'Where is the train station?' into French and Spanish.",
    "What are the main differences between a cat and a dog as pets?",
]
COMPARED = "bfloat16,float16,int8,fp8"  # 16-bit caches show how much plain rounding moves
KV_CACHE_MEMORY = 512 * 2**20  # bytes; plenty for these prompts


def prompt_ids(llm: LLM, prompts: list[str]) -> list[list[int]]:
    return [llm.tokenizer.apply_chat_template([{"role": "user", "content": p}]) for p in prompts]


def greedy_answers(llm: LLM, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return [out.token_ids for out in llm.generate(prompts, params)]


def last_prompt_logits(llm: LLM, prompt: list[int]) -> torch.Tensor:
    """The logits the model computes at the prompt's last position (its first answer token)."""
    model = llm.engine.runner.model
    captured = []
    compute_logits = model.compute_logits

    def recording(hidden: torch.Tensor) -> torch.Tensor:
        captured.append(compute_logits(hidden))
        return captured[-1]

    model.compute_logits = recording
    try:
        llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=1))
    finally:
        del model.compute_logits  # back to the class's method
    return captured[0][0]


def agreement(reference: list[list[int]], other: list[list[int]]) -> float:
    matched = 0
    for ours, theirs in zip(reference, other, strict=True):
        same = [a == b for a, b in zip(ours, theirs, strict=True)]
        matched += same.index(False) if False in same else len(same)
    return matched / sum(len(tokens) for tokens in reference)


def run(kv_dtype: str, prompts: list[str], max_tokens: int):
    """Answers and last-prompt logits with a float32 model and the given KV cache."""
    llm = LLM(dtype="float32", kv_cache_dtype=kv_dtype, kv_cache_memory=KV_CACHE_MEMORY)
    ids = prompt_ids(llm, prompts)
    answers = greedy_answers(llm, ids, max_tokens)
    logits = [last_prompt_logits(llm, prompt) for prompt in ids]
    del llm
    gc.collect()
    return answers, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="How many prompts.")
    parser.add_argument("--max-tokens", type=int, default=64, help="Answer length.")
    parser.add_argument("--kv-dtypes", default=COMPARED, help="KV dtypes to compare.")
    args = parser.parse_args()
    if not 1 <= args.prompts <= len(PROMPTS) or args.max_tokens < 1:
        parser.error(f"--prompts must be in [1, {len(PROMPTS)}] and --max-tokens >= 1")
    prompts = PROMPTS[: args.prompts]
    reference_answers, reference_logits = run("float32", prompts, args.max_tokens)
    table = Table(title=f"KV dtype vs float32 cache: {len(prompts)} prompts, greedy")
    for column in ("KV dtype", "token agreement", "max |Δ logit|", "mean |Δ logit|"):
        table.add_column(column, justify="right")
    for kv_dtype in args.kv_dtypes.split(","):
        answers, logits = run(kv_dtype, prompts, args.max_tokens)
        differences = torch.stack(
            [(a - b).abs() for a, b in zip(logits, reference_logits, strict=True)]
        )
        table.add_row(
            kv_dtype,
            f"{agreement(reference_answers, answers):.1%}",
            f"{differences.max():.4f}",
            f"{differences.mean():.5f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
