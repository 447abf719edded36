"""EngineConfig: every knob of the engine, validated where it is built."""

from dataclasses import dataclass

import torch

from tome.errors import InvalidRequestError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EngineConfig:
    model: str | None = None  # None: the embedded SmolLM2; else a directory, .gguf or Hub id
    dtype: str = "auto"  # auto: float32 on CPU, the checkpoint's dtype (or bfloat16) on GPU
    device: str = "auto"
    max_model_len: int | None = None  # None: the model's own window
    kv_cache_memory: int | None = None  # bytes for the KV pool; None: a share of free memory
    block_size: int = 16
    max_num_batched_tokens: int = 8192  # token budget of one step; longer prompts are chunked
    max_num_seqs: int = 64
    enable_prefix_caching: bool = True
    load_format: str = "auto"  # "dummy": random weights from the config alone
    seed: int = 0
    show_progress: bool = False

    def __post_init__(self) -> None:
        checks = [
            (
                self.dtype == "auto" or self.dtype in DTYPES,
                f"dtype must be auto or one of {', '.join(DTYPES)}",
            ),
            (self.block_size in (8, 16, 32, 64, 128), "block_size must be 8, 16, 32, 64 or 128"),
            (self.max_model_len is None or self.max_model_len > 0, "max_model_len must be > 0"),
            (
                self.kv_cache_memory is None or self.kv_cache_memory > 0,
                "kv_cache_memory must be > 0 bytes",
            ),
            (self.max_num_batched_tokens >= 16, "max_num_batched_tokens must be >= 16"),
            (self.max_num_seqs >= 1, "max_num_seqs must be >= 1"),
            (
                self.max_num_batched_tokens >= self.max_num_seqs,
                "max_num_batched_tokens must be >= max_num_seqs, or some decodes would wait",
            ),
            (self.load_format in ("auto", "dummy"), "load_format must be auto or dummy"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRequestError(message)
        self.resolved_device()

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise InvalidRequestError(f"unknown device {self.device!r}") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidRequestError("device cuda was asked for but no GPU is available")
        return device
