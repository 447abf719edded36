"""MoE decode and throughput side by side: tome, transformers, llama.cpp and vLLM-CPU on
one model's random weights, each engine in its own process, one after the other.

    python bench/moe_peers.py WORKDIR [--config bench/configs/qwen3-30b-a3b-4layers.json]

WORKDIR gets the model as an HF folder (random bfloat16 weights, seed 0, the embedded
SmolLM2's tokenizer, whose 49,152 tokens the 4-layer config's vocabulary matches), the same
weights converted by llama.cpp's convert_hf_to_gguf.py to a BF16 GGUF, and that quantized
to Q4_K_M by llama.cpp's llama_model_quantize. Environment:
- LLAMA_CPP_CONVERTER: the folder holding convert_hf_to_gguf.py (default: the tests' cache,
  ~/.cache/tome/llama.cpp-converter-0.3.36);
- LLAMA_PYTHON: a python with llama-cpp-python 0.3.36 (quantizes, and runs llama.cpp);
- VLLM_PYTHON: a python with vllm-cpu (runs vLLM, load_format="dummy").
An engine whose python is not given is left out. Greedy, prefix caching off, random ids.
Decode rate: 64 tokens after a 1,024-token prompt, timed as the difference between
generating 65 tokens and 1 (each after a fresh prompt; medians of 3); prefill: 1,024
tokens / the 1-token run; throughput: 16 requests of 256 prompt + 32 output tokens at
once, output tokens over the wall time."""

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT, DECODE, BATCH, BATCH_PROMPT, BATCH_OUT, REPEATS = 1024, 64, 16, 256, 32, 3
Q4_K_M = 15  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_K_M
ENGINES = ["tome-bf16", "tome-q4km", "transformers-bf16", "llama-bf16", "llama-q4km", "vllm-bf16"]


def ids(count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 49152) for _ in range(count)]


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def rates(generate, prompt: int = PROMPT, decode: int = DECODE) -> dict:
    """generate(prompt ids, tokens) runs one request from a fresh prompt. The 1-token and
    the (decode + 1)-token runs after `prompt` tokens alternate, REPEATS each; the medians
    are compared."""
    generate(ids(64, 9), 2)  # warm-up
    ones, manys = [], []
    for repeat in range(REPEATS):
        short, long = ids(prompt, 2 * repeat), ids(prompt, 2 * repeat + 1)
        ones.append(timed(lambda p=short: generate(p, 1)))
        manys.append(timed(lambda p=long: generate(p, decode + 1)))
    one, many = statistics.median(ones), statistics.median(manys)
    return {"prefill_tok_s": prompt / one, "decode_tok_s": decode / (many - one)}


def run_tome(workdir: Path, quantized: bool) -> dict:
    from tome import LLM, SamplingParams

    model = workdir / "model-q4_k_m.gguf" if quantized else workdir / "hf"
    dtype = "float32" if quantized else "bfloat16"
    llm = LLM(str(model), dtype=dtype, enable_prefix_caching=False, max_model_len=4096)

    def generate(prompts, tokens):
        params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
        return llm.generate(prompts, params)

    result = rates(lambda prompt, tokens: generate([prompt], tokens))
    batch = [ids(BATCH_PROMPT, 100 + i) for i in range(BATCH)]
    result["batch_tok_s"] = BATCH * BATCH_OUT / timed(lambda: generate(batch, BATCH_OUT))
    return result


def run_transformers(workdir: Path) -> dict:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(workdir / "hf", dtype=torch.bfloat16)

    @torch.inference_mode()
    def generate(prompt, tokens):
        model.generate(
            torch.tensor([prompt]), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False
        )

    return rates(generate)


def run_llama_cpp(workdir: Path, name: str) -> dict:
    from llama_cpp import Llama

    llm = Llama(str(workdir / name), n_ctx=4096, n_threads=os.cpu_count(), verbose=False)
    return rates(llama_cpp_generator(llm))


def llama_cpp_generator(llm):
    """generate(prompt ids, tokens) on a llama_cpp.Llama: the prompt from scratch (no reuse
    of the previous one's KV), then one token a step (a step costs the same whichever
    token it feeds)."""

    def generate(prompt: list[int], tokens: int) -> None:
        llm.reset()
        llm.eval(prompt)
        for _ in range(tokens - 1):
            llm.eval(prompt[-1:])

    return generate


def run_vllm(workdir: Path) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(workdir / "hf"), load_format="dummy", dtype="bfloat16",
        enable_prefix_caching=False, max_model_len=4096,
    )  # fmt: skip

    def generate(prompts, tokens):
        params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
        llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)

    result = rates(lambda prompt, tokens: generate([prompt], tokens))
    batch = [ids(BATCH_PROMPT, 100 + i) for i in range(BATCH)]
    result["batch_tok_s"] = BATCH * BATCH_OUT / timed(lambda: generate(batch, BATCH_OUT))
    return result


def worker(engine: str, workdir: Path) -> None:
    runs = {
        "tome-bf16": lambda: run_tome(workdir, quantized=False),
        "tome-q4km": lambda: run_tome(workdir, quantized=True),
        "transformers-bf16": lambda: run_transformers(workdir),
        "llama-bf16": lambda: run_llama_cpp(workdir, "model-bf16.gguf"),
        "llama-q4km": lambda: run_llama_cpp(workdir, "model-q4_k_m.gguf"),
        "vllm-bf16": lambda: run_vllm(workdir),
    }
    result = runs[engine]()
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def prepare(workdir: Path, config: Path) -> None:
    """The HF folder, its BF16 GGUF and the Q4_K_M quantization, each made once."""
    hf = workdir / "hf"
    if not (hf / "config.json").is_file():
        import torch
        import transformers

        from tome.loader.default_model import embedded_model_path

        torch.manual_seed(0)
        hf_config = transformers.AutoConfig.from_pretrained(config)
        model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
        model.save_pretrained(hf)
        gguf = embedded_model_path()
        transformers.AutoTokenizer.from_pretrained(
            gguf.parent, gguf_file=gguf.name
        ).save_pretrained(hf)
    converter = Path(
        os.environ.get("LLAMA_CPP_CONVERTER")
        or Path.home() / ".cache" / "tome" / "llama.cpp-converter-0.3.36"
    )
    bf16 = workdir / "model-bf16.gguf"
    if not bf16.is_file():
        env = {**os.environ, "PYTHONPATH": str(converter / "gguf-py")}
        subprocess.run(
            [sys.executable, str(converter / "convert_hf_to_gguf.py"), str(hf), "--outfile",
             str(bf16), "--outtype", "bf16"], check=True, env=env,
        )  # fmt: skip
    q4 = workdir / "model-q4_k_m.gguf"
    if not q4.is_file() and os.environ.get("LLAMA_PYTHON"):
        quantize = (
            "import sys, llama_cpp; p = llama_cpp.llama_model_quantize_default_params(); "
            f"p.ftype = {Q4_K_M}; "
            "src, dst = (a.encode() for a in sys.argv[1:]); "
            "sys.exit(llama_cpp.llama_model_quantize(src, dst, p))"
        )
        subprocess.run([os.environ["LLAMA_PYTHON"], "-c", quantize, str(bf16), str(q4)], check=True)


def python_for(engine: str) -> str | None:
    if engine.startswith("llama"):
        return os.environ.get("LLAMA_PYTHON")
    if engine.startswith("vllm"):
        return os.environ.get("VLLM_PYTHON")
    return sys.executable


def run_engines(script: str, workdir: Path, engines: list[str]) -> dict:
    """Each engine in its own process (`script WORKDIR --worker ENGINE` under python_for's
    python), one after the other; the results of their RESULT lines, printed as they come
    and as JSON at the end. An engine without its python is left out."""
    results = {}
    for engine in engines:
        python = python_for(engine)
        if python is None:
            continue
        done = subprocess.run(
            [python, script, str(workdir), "--worker", engine], capture_output=True, text=True
        )
        # vLLM's engine core outlives its process: nothing of it may run beside the next.
        subprocess.run(["pkill", "-f", "EngineCore"], check=False)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        results[engine] = json.loads(line[7:]) if line else {"error": done.stderr[-800:]}
        print(engine, results[engine], flush=True)
    print(json.dumps(results, indent=1))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument(
        "--config", type=Path, default=Path("bench/configs/qwen3-30b-a3b-4layers.json")
    )
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.workdir)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    prepare(args.workdir, args.config)
    run_engines(__file__, args.workdir, args.engines.split(","))


if __name__ == "__main__":
    main()
