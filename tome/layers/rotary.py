"""Rotary position embedding, computed for the positions of each batch (no table of every
position up to the window, which would be large at a million tokens)."""

from typing import Any

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from tome.errors import ModelLoadError

# Rope types whose frequencies depend on the current sequence length; the long-context
# work adds them.
LENGTH_DEPENDENT_ROPE_TYPES = ("dynamic", "longrope")


def rope_parameters(hf_config: Any) -> dict[str, Any]:
    """The rope dict under either spelling transformers has used."""
    params = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None)
    params = dict(params or {})
    params.setdefault("rope_type", params.get("type", "default"))
    params.setdefault("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    return params


class RotaryEmbedding(nn.Module):
    def __init__(self, hf_config: Any, head_dim: int) -> None:
        super().__init__()
        params = rope_parameters(hf_config)
        rope_type = params["rope_type"]
        if rope_type in LENGTH_DEPENDENT_ROPE_TYPES:
            raise ModelLoadError(f"rope_type {rope_type!r} is not supported yet")
        if rope_type == "default":
            exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
            inv_freq = 1.0 / (params["rope_theta"] ** exponents)
            self.attention_scaling = 1.0
        elif rope_type in ROPE_INIT_FUNCTIONS:
            inv_freq, self.attention_scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu")
        else:
            raise ModelLoadError(f"unknown rope_type {rope_type!r}")
        # A plain attribute, not a buffer, so that casting the model to bfloat16 leaves the
        # frequencies in float32 as the reference keeps them.
        self.inv_freq = inv_freq.float()

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of shape [tokens, head_dim], in float32."""
        if self.inv_freq.device != positions.device:
            self.inv_freq = self.inv_freq.to(positions.device)
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos() * self.attention_scaling, angles.sin() * self.attention_scaling


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [tokens, heads, head_dim]; cos, sin: [tokens, 1, head_dim] in x's dtype. The
    half-split layout transformers uses."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
