"""Rotary position embedding, computed for the positions of each batch (no table of every
position up to the window, which would be large at a million tokens).

Every rope type transformers knows. default, linear, yarn and llama3 have fixed
frequencies. dynamic (NTK) and longrope change theirs with the length of the sequence being
processed, as transformers does: that length is given per token (`rope_seq_lens`), since one
flattened batch holds many sequences."""

from typing import Any

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from tome.errors import ModelLoadError
from tome.layers.layer_kernels import layer_kernels


def rope_parameters(hf_config: Any) -> dict[str, Any]:
    """The rope dict under either spelling transformers has used."""
    params = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None)
    params = dict(params or {})
    params.setdefault("rope_type", params.get("type", "default"))
    params.setdefault("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    if params["rope_type"] in ("llama3", "yarn", "longrope"):
        # As transformers settles it: Phi-3 keeps the pretraining window beside the dict,
        # and that copy wins; without either, the window is max_position_embeddings.
        beside = getattr(hf_config, "original_max_position_embeddings", None)
        if beside:
            params["original_max_position_embeddings"] = beside
        params.setdefault("original_max_position_embeddings", hf_config.max_position_embeddings)
    return params


def context_window(hf_config: Any) -> int:
    """The longest sequence the model's rope is made for. Scaling stretches the original
    window by its factor; configs that state the stretched window in
    max_position_embeddings (llama3, Phi-3's longrope) already give the larger number."""
    params = rope_parameters(hf_config)
    window = hf_config.max_position_embeddings
    original = params.get("original_max_position_embeddings") or window
    return max(window, int(original * (params.get("factor") or 1.0)))


class RotaryEmbedding(nn.Module):
    def __init__(self, hf_config: Any, head_dim: int) -> None:
        super().__init__()
        # On the CPU whatever device the model is built on (the loader builds it on "meta",
        # where they would hold no values); cos_sin moves them to the positions' device.
        with torch.device("cpu"):
            self._set_frequencies(hf_config, head_dim)

    def _set_frequencies(self, hf_config: Any, head_dim: int) -> None:
        params = rope_parameters(hf_config)
        self.rope_type = params["rope_type"]
        self.theta = params["rope_theta"]
        self.exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        if self.rope_type in ("default", "dynamic"):
            # dynamic rotates like default until a sequence outgrows the window.
            inv_freq, self.attention_scaling = 1.0 / (self.theta**self.exponents), 1.0
        elif self.rope_type in ROPE_INIT_FUNCTIONS:
            inv_freq, self.attention_scaling = ROPE_INIT_FUNCTIONS[self.rope_type](hf_config, "cpu")
        else:
            raise ModelLoadError(f"unknown rope_type {self.rope_type!r}")
        # Plain attributes, not buffers, so that casting the model to bfloat16 leaves the
        # frequencies in float32 as the reference keeps them.
        self.inv_freq = inv_freq.float()
        if self.rope_type == "dynamic":
            # transformers' dynamic NTK switches at max_position_embeddings, not at
            # original_max_position_embeddings.
            self.window = hf_config.max_position_embeddings
            self.factor = params["factor"]
        if self.rope_type == "longrope":
            self.window = params["original_max_position_embeddings"]
            long_inv_freq, _ = ROPE_INIT_FUNCTIONS["longrope"](
                hf_config, "cpu", seq_len=self.window + 1
            )
            self.long_inv_freq = long_inv_freq.float()

    def cos_sin(
        self, positions: torch.Tensor, rope_seq_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of shape [tokens, head_dim], in float32. `rope_seq_lens` [tokens]: the
        length of the sequence each token is rotated for; read only by dynamic and longrope."""
        if self.inv_freq.device != positions.device:
            self._move_to(positions.device)
        if self.rope_type == "dynamic":
            inv_freq = self._dynamic_inv_freq(rope_seq_lens)
        elif self.rope_type == "longrope":
            is_long = (rope_seq_lens > self.window)[:, None]
            inv_freq = torch.where(is_long, self.long_inv_freq, self.inv_freq)
        else:
            inv_freq = self.inv_freq[None, :]
        freqs = positions.float()[:, None] * inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos() * self.attention_scaling, angles.sin() * self.attention_scaling

    def kv_namespace(self, prompt_len: int) -> bytes:
        """Keys of equal tokens at equal positions are equal only within one rotation
        regime, which for dynamic and longrope depends on the prompt's length (a prompt
        past the window rotates all its tokens the scaled way, as transformers does). The
        prefix cache shares blocks only within a regime."""
        if self.rope_type not in ("dynamic", "longrope") or prompt_len <= self.window:
            return b""
        if self.rope_type == "longrope":
            return b"longrope:long"
        return f"dynamic:{prompt_len}".encode()

    def _dynamic_inv_freq(self, rope_seq_lens: torch.Tensor) -> torch.Tensor:
        """NTK-aware scaling: the base grows with the length beyond the window; within it
        the base, and so the frequencies, are the default ones. Float32, in the order of
        transformers' arithmetic, so the values agree to float rounding."""
        dim = 2 * self.exponents.numel()
        lengths = rope_seq_lens.float().clamp(min=self.window)
        stretch = self.factor * lengths / self.window - (self.factor - 1)
        base = self.theta * stretch ** (dim / (dim - 2))
        return 1.0 / (base[:, None] ** self.exponents)

    def _move_to(self, device: torch.device) -> None:
        self.inv_freq = self.inv_freq.to(device)
        self.exponents = self.exponents.to(device)
        if self.rope_type == "longrope":
            self.long_inv_freq = self.long_inv_freq.to(device)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [tokens, heads, head_dim]; cos, sin: [tokens, 1, head_dim] in x's dtype. The
    half-split layout transformers uses. Where a kernel serves it (layer_kernels), x is
    rotated in place."""
    kernels = layer_kernels(x)
    if kernels is not None:
        return kernels.rotate_in_place(x, cos, sin)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
