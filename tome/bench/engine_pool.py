"""How large our engine's KV pool is in a benchmark, and which rows it holds.

The pool is sized for exactly the blocks the workload needs: the default pool is a share
of free memory (allocated up front on a GPU), which would swamp the memory column next to
transformers' cache, which grows only as far as the workload needs. Where the device cannot
hold that much beside the weights and one step's activations, the pool takes what is left
and the rows it cannot hold are skipped (a batch that does not fit would be run in waves,
and timed as something else)."""

from dataclasses import dataclass

import torch

from tome.bench.results import RowKey
from tome.bench.spec import ModelSpec
from tome.bench.workloads import Workload
from tome.engine.kv_cache import free_memory, kv_bytes_per_token, resolve_kv_cache_dtype
from tome.engine.memory_plan import weight_bytes
from tome.loader import load_hf_config
from tome.models.config import ModelConfig

BLOCK_SIZE = 16
RUNTIME_RESERVE = 4 * 2**30  # the CUDA context, rotary tables, allocator slack


@dataclass(frozen=True)
class PoolPlan:
    bytes_per_block: int
    blocks: int
    decode_tokens: int

    @property
    def bytes(self) -> int:
        return self.blocks * self.bytes_per_block

    def holds(self, key: RowKey) -> bool:
        return _blocks_needed(key, self.decode_tokens) <= self.blocks


def plan_pool(model: ModelSpec, workload: Workload, step_tokens: int) -> PoolPlan:
    """Blocks for every row of the workload, or as many as fit the device's free memory
    beside the weights and the activations of a `step_tokens` step."""
    config = ModelConfig.from_hf(load_hf_config(model.source))
    kv_dtype = resolve_kv_cache_dtype(model.kv_cache_dtype, model.torch_dtype, model.torch_device)
    bytes_per_block = BLOCK_SIZE * kv_bytes_per_token(config, kv_dtype)
    needed = max(_blocks_needed(key, workload.decode_tokens) for key in workload.rows())
    room = _room(config, model, step_tokens)
    return PoolPlan(bytes_per_block, min(needed, room // bytes_per_block), workload.decode_tokens)


def blocks_for(tokens: int) -> int:
    return -(-tokens // BLOCK_SIZE)


def _blocks_needed(key: RowKey, decode_tokens: int) -> int:
    kind, batch, context = key
    return (
        blocks_for(context + 1)
        if kind == "prefill"
        else batch * blocks_for(context + decode_tokens)
    )


def _room(config: ModelConfig, model: ModelSpec, step_tokens: int) -> int:
    """Free memory less the weights as loaded (quantized, if they are), one step's
    activations and the runtime's reserve."""
    dtype, device = model.torch_dtype, model.torch_device
    weights = weight_bytes(config, dtype, device, model.quantization, model.quantize_head)
    activations = step_tokens * activation_bytes_per_token(config, dtype)
    return free_memory(device) - weights - activations - RUNTIME_RESERVE


def activation_bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
    """An upper estimate of one token's activations in a layer, as if all were live at once:
    the residual stream and its norms, q, k, v, attention's output, gate, up and their
    product, and the MLP's output."""
    q_size = config.num_attention_heads * config.head_dim
    kv_size = config.num_key_value_heads * config.head_dim
    values = 5 * config.hidden_size + 2 * q_size + 2 * kv_size + 3 * config.intermediate_size
    return values * dtype.itemsize
