"""The roofline: the least time a step can take on a device, from the bytes it must move
and the FLOPs it must do, max(bytes / bandwidth, FLOPs / peak).

Counted: the matrix products of every layer and the lm_head (2 FLOPs a multiply-add),
attention's two products (QK^T and PV: 4 x head_dim FLOPs per query head and attended key),
every weight read once a step, every KV byte read once and written once. Not counted: norms,
rotary, softmax and activations' elementwise work, and activation traffic, all small next
to these at the shapes benchmarked, so the roofline is a bound no real run can beat.

The input embedding is a gather of one row per token, not a read of the table, unless it
is tied to the lm_head, which reads all of it."""

from dataclasses import dataclass

from tome.bench.device_peak import DevicePeak
from tome.bench.results import RowKey
from tome.engine.memory_plan import parameter_count
from tome.layers.sparse_prefill import SparsePrefillConfig
from tome.models.config import ModelConfig


@dataclass(frozen=True)
class Cost:
    bytes: float
    flops: float

    def seconds(self, peak: DevicePeak) -> float:
        return max(self.bytes / peak.bandwidth, self.flops / peak.flops)


def layer_matmul_parameters(config: ModelConfig) -> int:
    """Weights of one layer's projections: q, k, v, o, gate, up and down."""
    q_size = config.num_attention_heads * config.head_dim
    kv_size = config.num_key_value_heads * config.head_dim
    attention = config.hidden_size * (2 * q_size + 2 * kv_size)
    return attention + 3 * config.hidden_size * config.intermediate_size


def read_parameters(config: ModelConfig) -> int:
    """Parameters a forward reads whole: all but an untied input embedding."""
    untied_embedding = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    return parameter_count(config) - untied_embedding


def attention_flops(config: ModelConfig, attended_pairs: int) -> int:
    """QK^T and PV over `attended_pairs` (query, key) pairs of every query head and layer."""
    per_pair = 4 * config.head_dim * config.num_attention_heads * config.num_hidden_layers
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
    config: ModelConfig, weight_itemsize: int, kv_bytes_per_token: int, batch: int, context: int
) -> Cost:
    """One step of `batch` sequences, each attending over `context` tokens (its new one too)."""
    weights = read_parameters(config) * weight_itemsize
    kv = batch * context * kv_bytes_per_token
    matmuls = 2 * batch * (config.num_hidden_layers * layer_matmul_parameters(config))
    lm_head = 2 * batch * config.vocab_size * config.hidden_size
    return Cost(weights + kv, matmuls + lm_head + attention_flops(config, batch * context))


def prefill_cost(
    config: ModelConfig,
    weight_itemsize: int,
    kv_bytes_per_token: int,
    length: int,
    sparse: SparsePrefillConfig | None = None,
) -> Cost:
    """A `length`-token prompt to its first token: logits at the last position only."""
    weights = read_parameters(config) * weight_itemsize
    kv = 2 * length * kv_bytes_per_token
    matmuls = 2 * length * config.num_hidden_layers * layer_matmul_parameters(config)
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
    weight_itemsize: int
    kv_bytes_per_token: int
    peak: DevicePeak
    decode_tokens: int  # per sequence, the first (from the prefill) included
    sparse: SparsePrefillConfig | None = None

    def tokens_per_second(self, key: RowKey) -> float:
        kind, batch, context = key
        if kind == "prefill":
            cost = prefill_cost(
                self.config, self.weight_itemsize, self.kv_bytes_per_token, context, self.sparse
            )
            return context / cost.seconds(self.peak)
        # The timed steps: every token after the first, each over one more context token.
        steps = range(context + 1, context + self.decode_tokens)
        seconds = sum(
            decode_step_cost(
                self.config, self.weight_itemsize, self.kv_bytes_per_token, batch, n
            ).seconds(self.peak)
            for n in steps
        )
        return batch * len(steps) / seconds
