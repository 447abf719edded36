"""The paged KV pool: one K and one V tensor per layer, sized from a memory budget."""

import numpy as np
import psutil
import torch

from tome.layers.layer_kv_cache import LayerKVCache
from tome.models.config import ModelConfig

DEFAULT_CPU_SHARE = 0.25  # of available RAM, when no kv_cache_memory is given
DEFAULT_GPU_SHARE = 0.90  # of free GPU memory after the weights


def kv_bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
    element = torch.tensor([], dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * element


def kv_cache_dtype(model_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """On CPU the KV cache and attention stay in float32: without native bfloat16 units,
    bfloat16 attention runs several times slower there than float32."""
    return torch.float32 if device.type == "cpu" else model_dtype


def default_kv_budget(device: torch.device, most_useful: int) -> int:
    """A share of free memory, but never more than `most_useful` bytes (every sequence
    at the full window): more could never be used."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return min(int(free * DEFAULT_GPU_SHARE), most_useful)
    return min(int(psutil.virtual_memory().available * DEFAULT_CPU_SHARE), most_useful)


class KVPool:
    """Every layer's paged K/V. Blocks are the unit: each tensor of each layer has the
    block as its leading dimension, so copying a block means copying that row of each."""

    def __init__(
        self,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (num_blocks, block_size, config.num_key_value_heads, config.head_dim)
        self.num_blocks = num_blocks
        self.layers = [
            LayerKVCache(_zeros(shape, dtype, device), _zeros(shape, dtype, device))
            for _ in range(config.num_hidden_layers)
        ]

    def tensors(self) -> list[torch.Tensor]:
        return [t for layer in self.layers for t in layer.tensors()]

    @property
    def bytes_per_block(self) -> int:
        return sum(t[0].numel() * t.element_size() for t in self.tensors())


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    # numpy's zeros is calloc: large pools come as untouched zero pages from the OS, so a
    # multi-GiB pool costs nothing until used (torch.zeros would write every byte first).
    # Zeros, not garbage, because padded decode reads unwritten slots under a mask, and
    # a NaN there would survive the mask (0 * NaN).
    nbytes = torch.Size(shape).numel() * torch.tensor([], dtype=dtype).element_size()
    return torch.from_numpy(np.zeros(nbytes, dtype=np.uint8)).view(dtype).view(shape)
