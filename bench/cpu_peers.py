"""Issue 16's table: the embedded SmolLM2 on the CPU in Tome, llama.cpp and vLLM-CPU, each
engine in its own process, one after the other in one sitting.

    python bench/cpu_peers.py WORKDIR [--engines tome-default,tome-f32,...]

WORKDIR gets the HF folder (float32, expanded by transformers from the embedded GGUF, as
bench/quantization_accuracy.py makes it). Engines:
- tome-default: `LLM()`, the embedded Q4_1 file in blocks, float activations;
- tome-f32, tome-bf16: the HF folder in float32 and in bfloat16;
- llama-embedded: llama.cpp on the embedded file (LLAMA_PYTHON: a python with
  llama-cpp-python 0.3.36);
- vllm-bf16: vLLM-CPU on the HF folder in bfloat16 (VLLM_PYTHON: a python with vllm-cpu).
An engine whose python is not given is left out. Greedy, prefix caching off, random ids.
- decode at batch 1 after a 2,048-token prompt: 128 tokens, the time of 129 less that of 1
  (each from a fresh prompt; medians of 3);
- 32 requests of 512 prompt + 128 output tokens at once: output tokens over the wall time
  (llama-cpp-python runs one sequence: not measured);
- prefill of one 8,000-token prompt."""

import argparse
import json
import os
import resource
from pathlib import Path

from moe_peers import ids, llama_cpp_generator, rates, run_engines, timed
from quantized_peers import gguf_path

PROMPT, DECODE, BATCH, BATCH_PROMPT, BATCH_OUT, LONG_PROMPT = 2048, 128, 32, 512, 128, 8000
ENGINES = ["tome-default", "tome-f32", "tome-bf16", "llama-embedded", "vllm-bf16"]


def run_tome(workdir: Path, engine: str) -> dict:
    from tome import LLM, SamplingParams

    settings = {"enable_prefix_caching": False}
    if engine == "tome-default":
        llm = LLM(**settings)
    else:
        dtype = {"tome-f32": "float32", "tome-bf16": "bfloat16"}[engine]
        llm = LLM(str(workdir / "hf"), dtype=dtype, **settings)

    def generate(prompts: list[list[int]], tokens: int) -> None:
        llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True))

    return measure(generate)


def run_vllm(workdir: Path) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(workdir / "hf"), dtype="bfloat16", enable_prefix_caching=False,
        max_model_len=8192,
    )  # fmt: skip

    def generate(prompts: list[list[int]], tokens: int) -> None:
        params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
        llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)

    return measure(generate)


def measure(generate) -> dict:
    """The three rows for an engine that takes a batch of prompts at once."""
    single = rates(lambda prompt, tokens: generate([prompt], tokens), PROMPT, DECODE)
    batch = [ids(BATCH_PROMPT, 100 + i) for i in range(BATCH)]
    return {
        "decode_b1_tok_s": single["decode_tok_s"],
        "batch32_out_tok_s": BATCH * BATCH_OUT / timed(lambda: generate(batch, BATCH_OUT)),
        "prefill_8k_tok_s": LONG_PROMPT / timed(lambda: generate([ids(LONG_PROMPT, 7)], 1)),
    }


def run_llama_cpp() -> dict:
    from llama_cpp import Llama

    llm = Llama(str(gguf_path(Path(), "embedded")), n_ctx=8192, n_threads=os.cpu_count(),
                verbose=False)  # fmt: skip
    generate = llama_cpp_generator(llm)
    return {
        "decode_b1_tok_s": rates(generate, PROMPT, DECODE)["decode_tok_s"],
        "prefill_8k_tok_s": LONG_PROMPT / timed(lambda: generate(ids(LONG_PROMPT, 7), 1)),
    }


def worker(engine: str, workdir: Path) -> None:
    if engine.startswith("tome"):
        result = run_tome(workdir, engine)
    elif engine.startswith("llama"):
        result = run_llama_cpp()
    else:
        result = run_vllm(workdir)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.workdir)
        return
    from quantization_accuracy import float_folder

    float_folder(args.workdir / "hf")
    run_engines(__file__, args.workdir, args.engines.split(","))


if __name__ == "__main__":
    main()
