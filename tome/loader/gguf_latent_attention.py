"""The config fields of latent attention (DeepSeek's MLA) from llama.cpp's keys, shared by
the GGUF architectures that carry it (deepseek2, kimi-linear)."""

from collections.abc import Callable
from typing import Any


def latent_attention_fields(meta: Callable[..., Any]) -> dict[str, Any]:
    """meta(key, default=None): the architecture's value for a key."""
    rope_dim = int(meta("rope.dimension_count"))
    return dict(
        max_position_embeddings=int(meta("context_length")),
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon")),
        q_lora_rank=meta("attention.q_lora_rank"),
        kv_lora_rank=int(meta("attention.kv_lora_rank")),
        qk_rope_head_dim=rope_dim,
        qk_nope_head_dim=int(meta("attention.key_length_mla")) - rope_dim,
        v_head_dim=int(meta("attention.value_length_mla")),
    )
