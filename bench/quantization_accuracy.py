"""Accuracy and decode speed of each `quantization=` scheme against the float model
(BENCHMARKS.md, "Quantized weights").

The embedded SmolLM2 is expanded from its GGUF file into an HF folder (float32, through
transformers) unless HF_DIR names one. On real English prose (a text file; by default the
GPL-3 text Debian ships), each scheme is scored over windows of 1,024 tokens:
- perplexity over each window's second half, as `tome eval ppl` scores;
- greedy agreement: the share of those positions where the scheme's most likely next
  token is the float model's (both read the same text);
- decode speed at batch 1: 128 tokens after a 512-token prompt, greedy.

Usage: python bench/quantization_accuracy.py OUT.md [TEXT_FILE]
  HF_DIR=/tmp/smol-hf-f32 (made if absent), WINDOWS=4, SCHEMES="int8 int4 ..."
"""

import math
import os
import sys
import time
from pathlib import Path

import torch
import transformers

from tome import LLM, SamplingParams
from tome.layers.weight_quantization import WEIGHT_QUANTIZATIONS
from tome.loader import Tokenizer, embedded_model_path, resolve_model

WINDOW = 1024
DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"


def float_folder(path: Path) -> Path:
    if not (path / "config.json").exists():
        gguf = embedded_model_path()
        model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # transformers will not save a model it read from GGUF; a fresh one of the same
        # config with its expanded weights it will.
        config = model.config
        config.__dict__.pop("quantization_config", None)
        fresh = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(model.state_dict())
        fresh.save_pretrained(path)
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer.save_pretrained(path)
    return path


def score(llm: LLM, windows: list[list[int]]) -> tuple[list[float], list[list[int]]]:
    """Per window: the mean NLL over its second half and the top token at each position."""
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
    nlls, tops = [], []
    for out in llm.generate(windows, params):
        scored = out.prompt_logprobs[WINDOW // 2 :]
        nlls.append(-sum(p.logprob for p in scored) / len(scored))
        tops.append([max(p.top, key=p.top.get) for p in scored])
    return nlls, tops


def decode_speed(llm: LLM, prompt: list[int]) -> float:
    """Tokens a second past the first: the time of 129 tokens less that of one."""
    timings = []
    for tokens in (1, 129, 1, 129):
        start = time.perf_counter()
        llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True))
        timings.append(time.perf_counter() - start)
    return 128 / (min(timings[1::2]) - min(timings[0::2]))


def main() -> None:
    out_path = Path(sys.argv[1])
    text = Path(sys.argv[2] if len(sys.argv) > 2 else DEFAULT_TEXT).read_text()
    folder = float_folder(Path(os.environ.get("HF_DIR", "/tmp/smol-hf-f32")))
    count = int(os.environ.get("WINDOWS", "4"))
    schemes = os.environ.get("SCHEMES", " ".join(WEIGHT_QUANTIZATIONS)).split()
    ids = Tokenizer.from_source(resolve_model(str(folder))).encode(text)
    windows = [ids[i * WINDOW : (i + 1) * WINDOW] for i in range(count)]
    assert len(windows[-1]) == WINDOW, f"the text has {len(ids)} tokens, too few for {count}"
    rows = []
    reference_tops = None
    for scheme in [None, *schemes]:
        llm = LLM(str(folder), quantization=scheme, enable_prefix_caching=False, max_num_seqs=4)
        nlls, tops = score(llm, windows)
        reference_tops = reference_tops or tops
        pairs = [
            (a, b)
            for ours, ref in zip(tops, reference_tops, strict=True)
            for a, b in zip(ours, ref, strict=True)
        ]
        agreement = sum(a == b for a, b in pairs) / len(pairs)
        speed = decode_speed(llm, windows[0][:512])
        rows.append((scheme or "float32", math.exp(sum(nlls) / len(nlls)), agreement, speed))
        print(rows[-1], flush=True)
        del llm
    base = rows[0][1]
    lines = [
        f"{count} windows of {WINDOW} tokens; perplexity over each window's second half",
        "",
        "| weights | perplexity | vs float32 | greedy agreement | decode tok/s, batch 1 |",
        "|---|--:|--:|--:|--:|",
    ]
    for name, ppl, agreement, speed in rows:
        change = f"{100 * (ppl / base - 1):+.2f}%"
        lines.append(f"| {name} | {ppl:.3f} | {change} | {100 * agreement:.1f}% | {speed:.1f} |")
    out_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
