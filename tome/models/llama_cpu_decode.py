"""Decode steps of a Llama-family model on the CPU in one C++ call for all its layers
(kernels/cpu_decode_layers.py), where every layer is the plain one of llama.py over
block-quantized weights and the C++ kernels serve it: the role CUDA graphs play on a GPU.

The layers' Python (module calls, views, a dozen ctypes calls each) cost SmolLM2's 30
layers about 6 ms a token on a 2-core Xeon, beside 13 ms of kernels. The C++ pass calls
the same kernels on the same operands in the same order, so its outputs equal the
layer-by-layer forward's bit for bit (the tests hold them equal); the model file stays the
readable definition, and any step this does not serve (prefill chunks, a batch too large
for the kernel's row path) runs it."""

import ctypes

import torch

from tome.kernels import cpu_layer_ops
from tome.kernels.block_quantized_matmul import (
    EXPAND_FROM_ROWS,
    FLOAT32_ACTIVATIONS,
    INT8_ACTIVATIONS,
    KINDS,
)
from tome.kernels.cpu_decode_attention import CACHE_KINDS, split_blocks
from tome.kernels.cpu_decode_layers import (
    DecodeLayer,
    DecodeLinear,
    DecodeStep,
    entry_points,
    run_decode_layers,
)
from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.block_quantized_linear import BlockQuantizedLinear
from tome.layers.cpu_attention_backend import CpuAttentionBackend
from tome.layers.layer_kernels import layer_kernels
from tome.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaMLP, LlamaModel

# The K/V dtypes both the store and the decode kernel take as they are.
CACHE_DTYPES = (torch.float32, torch.bfloat16)


class CpuDecodeLayers:
    """Serves decode steps of `model` (a LlamaForCausalLM) through the C++ pass."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.model
        self.kernels = entry_points()
        self.linears = [linear for layer in self.model.layers for linear in _linears(layer)]
        self.bound: tuple = ()  # what the layers' structures were filled from
        self.layers: ctypes.Array | None = None
        self.scratch: dict[int, dict[str, torch.Tensor]] = {}

    def serves(self, meta: AttentionMetadata) -> bool:
        """Steps of single-token decodes only, few enough for the kernel's row path."""
        return meta.num_decodes == meta.num_seqs and meta.num_seqs < EXPAND_FROM_ROWS

    @torch.inference_mode()
    def run(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """The final hidden states, as LlamaModel.forward returns them."""
        residual = self.model.embed_tokens(input_ids).contiguous()
        cos, sin = (
            t.contiguous() for t in self.model.rotary.cos_sin(positions, meta.rope_seq_lens)
        )
        tokens = residual.shape[0]
        x = torch.empty_like(residual)
        tables = meta.block_tables_cpu[:tokens].contiguous()
        lens = meta.context_lens[:tokens].contiguous()
        slots = meta.slot_mapping.contiguous()
        scratch = self._scratch(tokens)
        step = DecodeStep(
            tokens,
            residual.data_ptr(),
            x.data_ptr(),
            cos.data_ptr(),
            sin.data_ptr(),
            slots.data_ptr(),
            tables.data_ptr(),
            tables.stride(0),
            lens.data_ptr(),
            split_blocks(max(meta.context_lens_cpu[:tokens]), meta.block_size, tokens),
            *[buffer.data_ptr() for buffer in scratch.values()],
        )
        run_decode_layers(self.kernels, self._layers(), step)
        return self.model.norm(x, residual)

    def _layers(self) -> ctypes.Array:
        """The layers' structures, filled again when a layer's 8-bit-activation flag or
        KV cache changed since (set_int8_activations, a cache bound anew)."""
        bound = (
            *[linear.int8_activations for linear in self.linears],
            *[layer.self_attn.attn.kv_cache.k.data_ptr() for layer in self.model.layers],
        )
        if bound != self.bound:
            self.layers = (DecodeLayer * len(self.model.layers))(
                *[_layer(layer) for layer in self.model.layers]
            )
            self.bound = bound
        return self.layers

    def _scratch(self, tokens: int) -> dict[str, torch.Tensor]:
        """Rows for the step's intermediate values, kept per batch size (none of them leaves
        the call), in DecodeStep's order."""
        if tokens not in self.scratch:
            first = self.model.layers[0]
            attention, mlp = first.self_attn, first.mlp
            widths = {
                "h": attention.o_proj.weight.n,
                "qkv": attention.qkv_proj.weight.n,
                "q": attention.q_size,
                "k": attention.kv_size,
                "attention": attention.q_size,
                "gate_up": mlp.gate_up_proj.weight.n,
                "activated": mlp.down_proj.weight.k,
            }
            self.scratch[tokens] = {
                name: torch.empty(tokens, width) for name, width in widths.items()
            }
        return self.scratch[tokens]


def cpu_decode_layers(model: torch.nn.Module) -> CpuDecodeLayers | None:
    """The C++ decode pass for `model`, or None where it cannot serve it: not a plain
    Llama-family stack on the CPU, a layer outside the kernels' reach, a kernel unbuilt."""
    stack = getattr(model, "model", None)
    if type(stack) is not LlamaModel or not all(_served(layer) for layer in stack.layers):
        return None
    if stack.norm.weight.dtype != torch.float32:
        return None
    if layer_kernels(torch.empty(1)) is not cpu_layer_ops or entry_points() is None:
        return None
    return CpuDecodeLayers(model)


def _served(layer: torch.nn.Module) -> bool:
    if type(layer) is not LlamaDecoderLayer:
        return False
    attention, mlp = layer.self_attn, layer.mlp
    if type(attention) is not LlamaAttention or type(mlp) is not LlamaMLP:
        return False
    cache = attention.attn.kv_cache
    norms = [layer.input_layernorm, layer.post_attention_layernorm]
    if attention.q_norm is not None:
        norms += [attention.q_norm, attention.k_norm]
    return (
        all(type(linear) is BlockQuantizedLinear for linear in _linears(layer))
        and isinstance(attention.attn.backend, CpuAttentionBackend)
        and cache.k.device.type == "cpu"
        and cache.k.dtype in CACHE_DTYPES
        and not cache.quantized
        and not cache.shares_kv
        and len({norm.eps for norm in norms}) == 1
    )


def _linears(layer: torch.nn.Module) -> list[torch.nn.Module]:
    attention, mlp = layer.self_attn, layer.mlp
    return [attention.qkv_proj, attention.o_proj, mlp.gate_up_proj, mlp.down_proj]


def _layer(layer: LlamaDecoderLayer) -> DecodeLayer:
    attention = layer.self_attn
    cache = attention.attn.kv_cache
    qk_norms = (
        (attention.q_norm.weight.data_ptr(), attention.k_norm.weight.data_ptr())
        if attention.q_norm is not None
        else (None, None)
    )
    return DecodeLayer(
        layer.input_layernorm.weight.data_ptr(),
        layer.post_attention_layernorm.weight.data_ptr(),
        *qk_norms,
        layer.input_layernorm.eps,
        attention.attn.scale,
        *[_linear(linear) for linear in _linears(layer)],
        attention.num_heads,
        attention.num_kv_heads,
        attention.head_dim,
        cache.k.shape[1],
        CACHE_KINDS[cache.k.dtype],
        cache.k.data_ptr(),
        cache.v.data_ptr(),
    )


def _linear(linear: BlockQuantizedLinear) -> DecodeLinear:
    weight = linear.weight
    return DecodeLinear(
        weight.codes.data_ptr(),
        weight.scales.data_ptr(),
        None if weight.offsets is None else weight.offsets.data_ptr(),
        None if linear.bias is None else linear.bias.data_ptr(),
        weight.n,
        weight.k,
        KINDS[weight.bits],
        INT8_ACTIVATIONS if linear.int8_activations else FLOAT32_ACTIVATIONS,
    )
