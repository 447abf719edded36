"""ModelSpec: the one model both sides load, settled in the parent process (path, dtype,
device) so the two worker processes cannot disagree about it."""

from dataclasses import dataclass

import torch

from tome.engine.config import DTYPES
from tome.layers.sparse_prefill import SparsePrefillConfig
from tome.loader import ModelSource


@dataclass(frozen=True)
class ModelSpec:
    name: str  # for the table: the model's name, or the config given to --dummy
    source: ModelSource
    dummy: bool  # random weights from the config alone
    dtype: str  # a key of DTYPES, never "auto"
    device: str  # "cpu" or "cuda"
    kv_cache_dtype: str = "auto"  # our engine's (EngineConfig.kv_cache_dtype)
    quantization: str | None = None  # ours only: EngineConfig.quantization
    quantize_head: bool = True  # ours only: EngineConfig.quantize_head
    int8_activations: bool = False  # ours only: EngineConfig.int8_activations
    rope_scaling: dict | None = None  # EngineConfig.rope_scaling, put on both sides
    sparse_prefill: SparsePrefillConfig | None = None  # ours only
    prefill_chunk: int | None = None  # ours only: most prompt tokens a step; None: whole prompts
    gguf_weights: str = "auto"  # ours only: EngineConfig.gguf_weights

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)
