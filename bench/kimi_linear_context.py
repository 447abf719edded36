"""Decode speed as the context grows: Kimi Linear against a full-attention model of the same
width and MoE (BENCHMARKS.md, "Kimi Linear"). Three of Kimi Linear's four layers keep a
fixed-size state, so its decode should barely slow from 1k to 32k tokens of context, while a
model whose every layer attends reads a cache that grows with the context.

    python bench/kimi_linear_context.py [--lengths 1024,8192,32768] [--quantization int4]
        [--decode-tokens 32] [CONFIG ...]

CONFIGs default to bench/configs/kimi-linear-48b-a3b-4layers.json (Kimi-Linear-48B-A3B cut
to 4 layers: 3 KDA + 1 latent attention) and ...-4layers-full-attention.json (the same with
latent attention in all 4 layers), random weights, quantized at load (int4 by default) with
8-bit activations. One prompt of random ids is read in
steps: its first 1k tokens, then on to 8k (a prefix-cache hit for the first part, resuming
from the state checkpointed there), then on to 32k; after each step the model decodes
`--decode-tokens` tokens at batch 1, timed from the first token to the last inside the step
loop, so the prefill's noise stays out of it. Each config runs in its own process."""

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = Path(__file__).parent / "configs"
DEFAULT_CONFIGS = [
    CONFIGS / "kimi-linear-48b-a3b-4layers.json",
    CONFIGS / "kimi-linear-48b-a3b-4layers-full-attention.json",
]


def measure(config: Path, lengths: list[int], quantization: str | None, decode_tokens: int):
    from tome import LLM, SamplingParams
    from tome.bench.dummy_model import dummy_model_dir
    from tome.kernels.cpu_isa import describe

    source = dummy_model_dir(str(config), Path(tempfile.mkdtemp()))
    llm = LLM(
        str(source.path),
        load_format="dummy",
        quantization=quantization,
        int8_activations=True,
        max_model_len=max(lengths) + decode_tokens + 64,
        max_num_seqs=1,
        # One slot (the default: max_num_seqs) would go to the answer's checkpoint after
        # the first step, and the next step's prompt could not resume from the first's.
        max_state_checkpoints=4,
    )
    engine = llm.engine
    vocab = engine.model_config.vocab_size
    prompt = [random.Random(0).randrange(vocab) for _ in range(max(lengths))]
    rows = []
    for length in lengths:
        params = SamplingParams(temperature=0.0, max_tokens=decode_tokens + 1, ignore_eos=True)
        engine.add_request(f"r{length}", prompt[:length], params)
        start = time.perf_counter()
        first = None
        while engine.has_unfinished():
            outputs = engine.step()
            if first is None and any(o.token_ids for o in outputs):
                first = time.perf_counter()
        end = time.perf_counter()
        [done] = outputs
        rows.append(
            {
                "context": length,
                "cached": done.num_cached_tokens,
                "prefill_tokens": length - done.num_cached_tokens,
                "prefill_s": first - start,
                "decode_tok_s": decode_tokens / (end - first),
            }
        )
    return {"config": config.name, "cpu": describe(), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("configs", nargs="*", type=Path, default=DEFAULT_CONFIGS)
    parser.add_argument("--lengths", default="1024,8192,32768")
    parser.add_argument("--quantization", default="int4")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.worker:
        result = measure(args.configs[0], lengths, args.quantization, args.decode_tokens)
        print("RESULT " + json.dumps(result), flush=True)
        return
    print("| model | context | prefilled now (cached) | prefill tok/s | decode tok/s, batch 1 |")
    print("|---|--:|--:|--:|--:|")
    cpu = "unknown"
    for config in args.configs:
        command = [sys.executable, __file__, str(config), "--worker", "--lengths", args.lengths]
        command += ["--quantization", args.quantization, "--decode-tokens", str(args.decode_tokens)]
        done = subprocess.run(command, capture_output=True, text=True)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{config.name}: failed: {done.stderr[-800:]}")
            continue
        result = json.loads(line[7:])
        cpu = result["cpu"]
        for row in result["rows"]:
            rate = row["prefill_tokens"] / row["prefill_s"]
            print(
                f"| {config.stem} | {row['context']:,} | {row['prefill_tokens']:,} "
                f"({row['cached']:,}) | {rate:.0f} | {row['decode_tok_s']:.1f} |",
                flush=True,
            )
    print(f"\nCPU: {cpu}")


if __name__ == "__main__":
    main()
