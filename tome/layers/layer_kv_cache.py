"""LayerKVCache: one layer's slice of the paged KV pool, as the attention backend sees it."""

from dataclasses import dataclass

import torch


@dataclass
class LayerKVCache:
    """K and V of shape [num_blocks, block_size, kv_heads, head_dim]. Every tensor here
    has the block as its leading dimension, so a block moves between pools (device, host,
    disk) by copying row `block_id` of each tensor in `tensors()`."""

    k: torch.Tensor
    v: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        return [self.k, self.v]
