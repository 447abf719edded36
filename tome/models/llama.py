"""Llama-family decoder as a plain PyTorch forward pass over a flattened batch.

One file serves Llama, Mistral, Qwen2 (bias on q/k/v) and Qwen3 (RMSNorm on q and k per
head). q/k/v and gate/up are fused into one matmul each; `load_weights` takes checkpoints
under Hugging Face names and packs them."""

from collections.abc import Callable, Iterable

import torch
from torch import nn

from tome.errors import ModelLoadError
from tome.kernels.block_quantized_matmul import BlockQuantizedWeight
from tome.kernels.float8_matmul import Float8Weight
from tome.layers.activation import silu_and_mul
from tome.layers.attention import Attention
from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.block_quantized_linear import BlockQuantizedEmbedding, BlockQuantizedLinear
from tome.layers.quantized_linear import DequantizingEmbedding, quantized_linear
from tome.layers.rmsnorm import RMSNorm
from tome.layers.rotary import RotaryEmbedding, apply_rotary
from tome.loader.quantized_formats import DecodedWeight
from tome.models.block_shards import BlockShards
from tome.models.config import ModelConfig


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias
        )
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.attn = Attention(self.num_heads, self.num_kv_heads, self.head_dim, self.head_dim**-0.5)

    def forward(
        self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata
    ) -> torch.Tensor:
        tokens = x.shape[0]
        qkv = self.qkv_proj(x)
        if self.q_norm is None:
            # q and k sit side by side in the fused output: rotate both in one call.
            qk = qkv[:, : self.q_size + self.kv_size].view(tokens, -1, self.head_dim)
            q, k = apply_rotary(qk, *cos_sin).split([self.num_heads, self.num_kv_heads], dim=1)
        else:
            q = self.q_norm(qkv[:, : self.q_size].view(tokens, self.num_heads, self.head_dim))
            k = self.k_norm(
                qkv[:, self.q_size : self.q_size + self.kv_size].view(tokens, -1, self.head_dim)
            )
            q, k = apply_rotary(q, *cos_sin), apply_rotary(k, *cos_sin)
        v = qkv[:, self.q_size + self.kv_size :].view(tokens, self.num_kv_heads, self.head_dim)
        out = self.attn(q, k, v, meta)
        return self.o_proj(out.reshape(tokens, self.q_size))


class LlamaMLP(nn.Module):
    def __init__(
        self, config: ModelConfig, intermediate_size: int | None = None, bias: bool = False
    ) -> None:
        super().__init__()
        intermediate_size = intermediate_size or config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, attention: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.self_attn = attention
        self.mlp = mlp
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, x: torch.Tensor | None, residual: torch.Tensor, cos_sin, meta: AttentionMetadata
    ) -> torch.Tensor:
        """x: the previous layer's output, not yet added to the residual stream (None before
        the first layer). The norms add it and this layer's attention output to `residual`
        in place, fused with their work. Returns this layer's MLP output, also unadded."""
        h = self.input_layernorm(residual) if x is None else self.input_layernorm(x, residual)
        h = self.post_attention_layernorm(self.self_attn(h, cos_sin, meta), residual)
        return self.mlp(h)


class LlamaModel(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        make_attention: Callable[[int], nn.Module],
        make_mlp: Callable[[int], nn.Module],
    ) -> None:
        """make_attention(layer index): the layer's attention (a family's latent attention,
        say); make_mlp(layer index): its feed-forward block (a family's MoE, say). All
        layers share one rotary embedding: the model rotates once per batch."""
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary = RotaryEmbedding(config.hf_config, config.head_dim)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, make_attention(i), make_mlp(i))
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, positions, meta: AttentionMetadata) -> torch.Tensor:
        residual = self.embed_tokens(input_ids)
        cos, sin = self.rotary.cos_sin(positions, meta.rope_seq_lens)
        cos_sin = (cos[:, None, :].to(residual.dtype), sin[:, None, :].to(residual.dtype))
        x = None
        for layer in self.layers:
            x = layer(x, residual, cos_sin, meta)
        return self.norm(x, residual)


# Checkpoint names that are slices of one of our fused weights: name -> (fused name, shard).
PACKED_SHARDS = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = self.make_model()
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """Hidden states [tokens, hidden] for a flattened batch."""
        return self.model(input_ids, positions, meta)

    def make_model(self) -> nn.Module:
        """The decoder stack; a family whose layers differ in more than their attention and
        MLP (one without rotary, say) overrides it."""
        return LlamaModel(self.config, self.make_attention, self.make_mlp)

    def make_attention(self, layer_index: int) -> nn.Module:
        """A layer's attention; families with another kind override it."""
        return LlamaAttention(self.config)

    def make_mlp(self, layer_index: int) -> nn.Module:
        """A layer's feed-forward block; families with experts override it."""
        return LlamaMLP(self.config)

    def kv_namespace(self, prompt_len: int) -> bytes:
        """What, besides the tokens, decides the keys a prompt of this length writes: only
        length-dependent rope types make it anything but empty (see RotaryEmbedding)."""
        return self.model.rotary.kv_namespace(prompt_len)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def checkpoint_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor a checkpoint holds for this model, under Hugging Face names."""
        shapes = {}
        for name, param in self.named_parameters():
            shapes.update(self._unpacked_shapes(name, tuple(param.shape)))
        return shapes

    def _unpacked_shapes(self, name: str, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for original, (fused, shard) in PACKED_SHARDS.items():
            if f".{fused}." in name:
                size = self._shard_sizes(fused, shape[0])[shard]
                shapes[name.replace(fused, original)] = (size, *shape[1:])
        return shapes or {name: shape}

    def _shard_sizes(self, fused: str, rows: int) -> list[int]:
        """The rows of each shard of a fused weight of `rows` rows."""
        c = self.config
        if fused == "qkv_proj":
            kv = c.num_key_value_heads * c.head_dim
            return [c.num_attention_heads * c.head_dim, kv, kv]
        return [rows // 2, rows // 2]  # gate, up

    def load_weights(
        self,
        weights: Iterable[tuple[str, torch.Tensor | BlockQuantizedWeight]],
        device: torch.device | None = None,
    ) -> None:
        """Copy checkpoint tensors in; every parameter must be filled exactly once.
        Block-quantized tensors replace their layers where the whole layer came in blocks.
        A model built on the meta device gets each parameter allocated on `device` (the
        CPU by default) when its first tensor arrives."""
        device = device or torch.device("cpu")
        params = dict(self.named_parameters())
        expected = self.checkpoint_shapes()
        loaded: set[str] = set()
        blocks = BlockShards()
        for name, tensor in weights:
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            if name not in expected:
                raise ModelLoadError(f"checkpoint has an unexpected tensor {name!r}")
            if isinstance(tensor, BlockQuantizedWeight | Float8Weight | DecodedWeight):
                _check_shape(name, tensor.shape, expected[name])
                blocks.add(*self._target(name), name, tensor)
            else:
                self._load_one(params, name, tensor, device)
            loaded.add(name)
        missing = set(expected) - loaded
        if missing:
            raise ModelLoadError(f"checkpoint lacks {len(missing)} tensors, e.g. {min(missing)!r}")
        blocks.install(
            self,
            self._shard_count,
            lambda name, t: self._load_one(params, name, t, device),
            device,
        )
        self._tie_head()
        unfilled = [name for name, t in self.named_parameters() if t.is_meta]
        if unfilled:
            raise ModelLoadError(
                f"no weights reached {len(unfilled)} tensors, e.g. {unfilled[0]!r}"
            )

    def _tie_head(self) -> None:
        """The head shares the embedding's weight again: it may have been allocated, or
        kept in blocks, after the two were tied at construction."""
        if not self.config.tie_word_embeddings:
            return
        embedding = self.model.embed_tokens
        if isinstance(embedding, BlockQuantizedEmbedding):
            self.lm_head = BlockQuantizedLinear(embedding.weight, None)
        elif isinstance(embedding, DequantizingEmbedding):
            weight = embedding.weight
            self.lm_head = quantized_linear(weight, None, embedding.dtype, _device_of(weight))
        else:
            self.lm_head.weight = embedding.weight

    def _shard_count(self, target: str) -> int:
        fused = _fused_name(target)
        return 1 if fused is None else len(self._shard_sizes(fused, 0))

    def _target(self, name: str) -> tuple[str, int]:
        """The parameter a checkpoint tensor goes into, and which of its shards it is."""
        return _target(name)

    def _shard_view(self, target_name: str, shard: int, data: torch.Tensor) -> torch.Tensor:
        """The part of parameter `target_name` (its data) that shard `shard` fills."""
        fused = _fused_name(target_name)
        if fused is None:
            return data
        sizes = self._shard_sizes(fused, data.shape[0])
        return data.narrow(0, sum(sizes[:shard]), sizes[shard])

    def _load_one(
        self,
        params: dict[str, nn.Parameter],
        name: str,
        tensor: torch.Tensor,
        device: torch.device,
    ) -> None:
        target_name, shard = self._target(name)
        if params[target_name].is_meta:
            params[target_name] = self._allocate(target_name, params[target_name], device)
        target = self._shard_view(target_name, shard, params[target_name].data)
        _check_shape(name, tuple(tensor.shape), tuple(target.shape))
        target.copy_(tensor)

    def _allocate(self, name: str, placeholder: nn.Parameter, device: torch.device) -> nn.Parameter:
        """A real, uninitialized parameter on `device` in the place of a meta one."""
        module_name, attribute = name.rsplit(".", 1)
        real = nn.Parameter(
            torch.empty(placeholder.shape, dtype=placeholder.dtype, device=device),
            requires_grad=False,
        )
        self.get_submodule(module_name).register_parameter(attribute, real)
        return real


def _target(name: str) -> tuple[str, int]:
    """The parameter a checkpoint tensor goes into, and which of its shards it is."""
    for original, (fused, shard) in PACKED_SHARDS.items():
        if f".{original}." in name:
            return name.replace(original, fused), shard
    return name, 0


def _fused_name(target: str) -> str | None:
    return next((fused for fused, _ in PACKED_SHARDS.values() if f".{fused}." in target), None)


def _device_of(weight: BlockQuantizedWeight | Float8Weight) -> torch.device:
    return weight.scales.device


def _check_shape(name: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if shape != expected:
        raise ModelLoadError(f"tensor {name!r} has shape {shape}, expected {expected}")
