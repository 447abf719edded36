"""LayerKVCache: one layer's slice of the paged KV pool, as the attention backend sees it."""

from dataclasses import dataclass

import torch


@dataclass
class LayerKVCache:
    """K and V of shape [num_blocks, block_size, kv_heads, head_dim]. Every tensor here
    has the block as its leading dimension, so a block moves between pools (device, host,
    disk) by copying row `block_id` of each tensor in `tensors()`.

    A quantized cache (int8, fp8) also holds one scale per token and head,
    [num_blocks, block_size, kv_heads], and is read back as `read_dtype`.

    A latent cache (DeepSeek's MLA) holds one tensor that serves as both K and V: `v` is
    `k` (and `v_scale` is `k_scale`), so it is stored, moved and counted once."""

    k: torch.Tensor
    v: torch.Tensor
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None
    read_dtype: torch.dtype = torch.float32  # a quantized cache's K/V are read back as this

    @property
    def quantized(self) -> bool:
        return self.k_scale is not None

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype attention runs in over this cache."""
        return self.read_dtype if self.quantized else self.k.dtype

    @property
    def shares_kv(self) -> bool:
        return self.v is self.k

    def tensors(self) -> list[torch.Tensor]:
        if self.shares_kv:
            return [self.k, self.k_scale] if self.quantized else [self.k]
        scales = [self.k_scale, self.v_scale] if self.quantized else []
        return [self.k, self.v, *scales]
