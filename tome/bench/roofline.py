"""The roofline: the least time a step can take on a device, from the bytes it must move
and the FLOPs it must do, max(bytes / bandwidth, FLOPs / peak).

Counted: the matrix products of every layer and the lm_head (2 FLOPs a multiply-add), a
MoE layer's for the experts each token uses, attention's two products (QK^T and PV: 4 x
head_dim FLOPs per query head and attended key), every weight read once a step (of routed
experts, those some token of the step picks, expected over uniform routing), every KV
byte read once and written once. Not counted: norms,
rotary, softmax and activations' elementwise work, and activation traffic, all small next
to these at the shapes benchmarked, so the roofline is a bound no real run can beat.

The input embedding is a gather of one row per token, not a read of the table, unless it
is tied to the lm_head, which reads all of it."""

from dataclasses import dataclass
from functools import cached_property

import torch

from tome.bench.device_peak import DevicePeak
from tome.bench.results import RowKey
from tome.engine.memory_plan import checkpoint_parameters
from tome.layers.moe import FusedExperts
from tome.layers.sparse_prefill import SparsePrefillConfig
from tome.models.config import ModelConfig
from tome.models.registry import model_class


@dataclass(frozen=True)
class Cost:
    bytes: float
    flops: float

    def seconds(self, peak: DevicePeak) -> float:
        return max(self.bytes / peak.bandwidth, self.flops / peak.flops)


@dataclass(frozen=True)
class LayerWeights:
    """The decoder layers' matrices, counted on the model built on the meta device: those
    every token multiplies by (attention, dense MLPs, routers, shared experts) and the
    routed experts, of which a token uses `active` of `per_layer` in each MoE layer; and
    the checkpoint's parameters in all."""

    dense: int
    experts: int
    checkpoint: int
    per_layer: int = 1
    active: int = 1

    def per_token(self) -> float:
        return self.dense + self.experts * self.active / self.per_layer

    def experts_read(self, tokens: int) -> float:
        """Expert parameters a step of `tokens` tokens reads: each expert is read once if
        any token picks it, expected over uniform routing."""
        unpicked = (1 - self.active / self.per_layer) ** tokens
        return self.experts * (1 - unpicked)


def layer_weights(config: ModelConfig) -> LayerWeights:
    with torch.device("meta"):
        model = model_class(config)(config)
    dense = experts = 0
    per_layer = 1
    for layer in model.model.layers:
        for module in layer.modules():
            if isinstance(module, FusedExperts):
                experts += module.gate_up_proj.numel() + module.down_proj.numel()
                per_layer = module.num_experts
            else:
                direct = module.parameters(recurse=False)
                dense += sum(p.numel() for p in direct if p.dim() >= 2)
    active = getattr(config.hf_config, "num_experts_per_tok", None) or 1
    checkpoint = checkpoint_parameters(model)
    return LayerWeights(dense, experts, checkpoint, per_layer, active if experts else 1)


def read_parameters(config: ModelConfig, weights: LayerWeights, tokens: int) -> float:
    """Parameters a forward of `tokens` tokens reads: all but an untied input embedding,
    and of a MoE model's routed experts only those some token picks."""
    untied_embedding = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    unread = weights.experts - weights.experts_read(tokens)
    return weights.checkpoint - untied_embedding - unread


def attention_flops(config: ModelConfig, attended_pairs: int) -> int:
    """QK^T and PV over `attended_pairs` (query, key) pairs of every query head and layer,
    each product as wide as a cached key (latent attention attends over its whole cached
    vector, 576 values for DeepSeek-V3, for both)."""
    per_pair = 4 * config.cache_head_dim * config.num_attention_heads * config.num_hidden_layers
    return per_pair * attended_pairs


def causal_pairs(length: int) -> int:
    """(query, key) pairs of causal attention over a `length`-token prompt: query i sees i+1."""
    return length * (length + 1) // 2


def sparse_pairs(length: int, sparse: SparsePrefillConfig) -> int:
    """At most sink + vertical columns and local + slash distances per query (fewer where they
    overlap), and never more than causal attention; dense below min_context."""
    if length < sparse.min_context:
        return causal_pairs(length)
    kept = min(sparse.sink + sparse.vertical + sparse.local + sparse.slash, length)
    return causal_pairs(kept) + (length - kept) * kept


def decode_step_cost(
    config: ModelConfig,
    layers: LayerWeights,
    weight_itemsize: float,
    kv_bytes_per_token: int,
    batch: int,
    context: int,
) -> Cost:
    """One step of `batch` sequences, each attending over `context` tokens (its new one too)."""
    weights = read_parameters(config, layers, batch) * weight_itemsize
    kv = batch * context * kv_bytes_per_token
    matmuls = 2 * batch * layers.per_token()
    lm_head = 2 * batch * config.vocab_size * config.hidden_size
    return Cost(weights + kv, matmuls + lm_head + attention_flops(config, batch * context))


def prefill_cost(
    config: ModelConfig,
    layers: LayerWeights,
    weight_itemsize: float,
    kv_bytes_per_token: int,
    length: int,
    sparse: SparsePrefillConfig | None = None,
) -> Cost:
    """A `length`-token prompt to its first token: logits at the last position only."""
    weights = read_parameters(config, layers, length) * weight_itemsize
    kv = 2 * length * kv_bytes_per_token
    matmuls = 2 * length * layers.per_token()
    lm_head = 2 * config.vocab_size * config.hidden_size
    if sparse is None:
        attention = attention_flops(config, causal_pairs(length))
    else:
        attention = attention_flops(config, sparse_pairs(length, sparse))
        if length >= sparse.min_context:
            # The pattern's estimate: the last queries' scores (QK^T only) over all keys.
            attention += attention_flops(config, min(sparse.last_queries, length) * length) // 2
    return Cost(weights + kv, matmuls + lm_head + attention)


@dataclass(frozen=True)
class Roofline:
    """Roofline tokens/s of a benchmark's rows, for our engine's dtypes and settings."""

    config: ModelConfig
    # Bytes a parameter keeps: the dtype's size, or under quantization the loaded
    # weights' bytes (memory_plan.weight_bytes) over the parameters, as if read evenly.
    weight_itemsize: float
    kv_bytes_per_token: int
    peak: DevicePeak
    decode_tokens: int  # per sequence, the first (from the prefill) included
    sparse: SparsePrefillConfig | None = None

    @cached_property
    def layers(self) -> LayerWeights:
        return layer_weights(self.config)

    def tokens_per_second(self, key: RowKey) -> float:
        kind, batch, context = key
        if kind == "prefill":
            cost = prefill_cost(
                self.config,
                self.layers,
                self.weight_itemsize,
                self.kv_bytes_per_token,
                context,
                self.sparse,
            )
            return context / cost.seconds(self.peak)
        # The timed steps: every token after the first, each over one more context token.
        steps = range(context + 1, context + self.decode_tokens)
        seconds = sum(
            decode_step_cost(
                self.config, self.layers, self.weight_itemsize, self.kv_bytes_per_token, batch, n
            ).seconds(self.peak)
            for n in steps
        )
        return batch * len(steps) / seconds
