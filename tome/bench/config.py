"""BenchConfig: what `tome bench` was asked to run, validated where it is built."""

from dataclasses import dataclass
from pathlib import Path

import torch

from tome.bench.device_peak import MEASURE, check_peak_source
from tome.engine.config import EngineConfig
from tome.errors import InvalidRequestError
from tome.layers.sparse_prefill import SparsePrefillConfig


@dataclass(frozen=True)
class BenchConfig:
    model: str | None = None  # None: the embedded SmolLM2
    dummy: str | None = None  # a config.json (or its folder): random weights on both sides
    dtype: str = "auto"
    device: str = "auto"
    kv_cache_dtype: str = "auto"  # our engine's KV cache; transformers keeps its own
    quantization: str | None = None  # ours only: EngineConfig.quantization
    quantize_head: bool = True  # ours only: EngineConfig.quantize_head
    int8_activations: bool = False  # ours only: EngineConfig.int8_activations
    rope_scaling: dict | None = None  # EngineConfig.rope_scaling, put on both sides
    sparse_prefill: SparsePrefillConfig | None = None  # ours only: transformers is dense
    prefill_lengths: tuple[int, ...] = (512, 2048, 8192)
    decode_batches: tuple[int, ...] = (1, 16)
    decode_prompt_len: int | tuple[int, ...] = 2048  # one prompt length or several
    decode_tokens: int = 64
    # One prefill is a single forward pass, at the mercy of a moment's load on the host; the
    # median of a few is not. A decode row already averages over its steps.
    prefill_repeats: int = 3
    skip_hf: bool = False
    markdown: Path | None = None
    seed: int = 0
    roofline: bool = False  # the roofline columns; always on for cuda
    roofline_peak: str = MEASURE  # measure the device, or a DevicePeak preset's name
    prefill_chunk: int | None = None  # ours only: most prompt tokens a step
    gguf_weights: str = "auto"  # ours only: EngineConfig.gguf_weights

    @property
    def decode_prompt_lens(self) -> tuple[int, ...]:
        lengths = self.decode_prompt_len
        return (lengths,) if isinstance(lengths, int) else lengths

    @property
    def wants_roofline(self) -> bool:
        return self.roofline or self.resolved_device().type == "cuda"

    def __post_init__(self) -> None:
        checks = [
            (self.model is None or self.dummy is None, "give --model or --dummy, not both"),
            (bool(self.prefill_lengths), "--prefill-lengths needs at least one length"),
            (bool(self.decode_batches), "--decode-batches needs at least one batch size"),
            (all(n >= 1 for n in self.prefill_lengths), "prefill lengths must be >= 1"),
            (all(b >= 1 for b in self.decode_batches), "decode batch sizes must be >= 1"),
            (bool(self.decode_prompt_lens), "--decode-prompt-len needs at least one length"),
            (all(n >= 1 for n in self.decode_prompt_lens), "--decode-prompt-len must be >= 1"),
            (
                self.prefill_chunk is None or self.prefill_chunk >= 16,
                "--prefill-chunk must be >= 16",
            ),
            # The first token comes from the prefill; at least one more is needed to time.
            (self.decode_tokens >= 2, "--decode-tokens must be >= 2"),
            (self.prefill_repeats >= 1, "--prefill-repeats must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRequestError(message)
        check_peak_source(self.roofline_peak)
        self.resolved_device()  # validates dtypes and device with the engine's own messages

    def resolved_device(self) -> torch.device:
        config = EngineConfig(
            dtype=self.dtype,
            device=self.device,
            kv_cache_dtype=self.kv_cache_dtype,
            quantization=self.quantization,
            rope_scaling=self.rope_scaling,
            gguf_weights=self.gguf_weights,
        )
        return config.resolved_device()


def parse_int_list(text: str, flag: str) -> tuple[int, ...]:
    """'512,2048' -> (512, 2048); anything else is a one-line error naming the flag."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):
        raise InvalidRequestError(
            f"{flag} must be a comma-separated list of positive integers, e.g. 1,16; got {text!r}"
        )
    return tuple(dict.fromkeys(int(part) for part in parts))
