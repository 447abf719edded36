"""KVTiers: host memory (and optionally disk) below the device KV pool, after Mooncake's
KV-centric design and vLLM/LMCache CPU offloading: a cached prefix block the device pool
evicts is kept lower down and copied back on a later hit instead of being recomputed.

The block manager only names the moves (BlockSwaps); `apply` makes them at the start of a
step, before the forward pass overwrites or reads those blocks: evicted blocks out first,
then restored blocks in. Each tier is a TierStack (tier_stack.py): bounded host memory,
least recently used out first, written through to disk.

A hybrid model's recurrent-state checkpoints (state_checkpoints.py) travel with their
blocks: the checkpoint at the end of an evicted block goes down beside it, into a stack of
its own with the state pool's layout, and comes back into the slot of a sequence whose
hit ends at that block. They take at most STATE_SHARE of each tier's bytes: a sequence
keeps at most three checkpoints, and for the long prompts such tiers are for that is a
small part of the prompt's KV (Kimi-Linear-48B's three, 124 MiB, are a quarter of a
64k-token prompt's KV at 8,064 bytes a token)."""

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from tome.engine.block_manager import BlockSwaps
from tome.engine.config import EngineConfig
from tome.engine.disk_kv_tier import DiskKVTier, kv_fingerprint
from tome.engine.host_kv_tier import HostKVTier
from tome.engine.kv_cache import KVPool
from tome.engine.state_pool import StatePool
from tome.engine.tier_stack import Tier, TierStack
from tome.errors import InvalidRequestError
from tome.loader.model_source import ModelSource

STATE_SHARE = 0.25  # of each tier's bytes, at most, for state checkpoints
STATE_FOLDER = "states"  # below the disk tier's folder: files named like their blocks'


@dataclass
class KVTierStats:
    """Prefix-cache traffic since the engine started. Hits are tokens whose KV was reused
    rather than computed, counted at every admission of a request (again after a
    preemption); bytes are block contents copied between tiers; checkpoints are a hybrid
    model's states moved with their blocks."""

    device_hit_tokens: int = 0
    host_hit_tokens: int = 0
    disk_hit_tokens: int = 0
    bytes_to_host: int = 0
    bytes_from_host: int = 0
    bytes_to_disk: int = 0
    bytes_from_disk: int = 0
    checkpoints_to_host: int = 0
    checkpoints_from_host: int = 0
    checkpoints_to_disk: int = 0
    checkpoints_from_disk: int = 0


class KVTiers:
    def __init__(
        self,
        host: HostKVTier,
        disk: DiskKVTier | None,
        block_size: int,
        block_bytes: int,
        states: TierStack | None = None,
    ) -> None:
        """Tiers for KV blocks of `block_bytes` in `host` and `disk`; `states`, where a
        hybrid model's checkpoints go down with their blocks."""
        self.host = host
        self.disk = disk
        self.blocks = TierStack(host, disk)
        self.states = states
        self.block_size = block_size
        self.block_bytes = block_bytes
        self.stats = KVTierStats()

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self.blocks

    @torch.inference_mode()
    def apply(self, swaps: BlockSwaps, pool: KVPool) -> set[int]:
        """Copy evicted blocks out, then restored blocks in. Returns the device blocks that
        could not be restored (a disk file gone or damaged): their contents are not valid."""
        down, up, lost = _move(self.blocks, pool.tensors(), swaps.outs, swaps.ins)
        self.stats.bytes_to_host += self.block_bytes * down["host"]
        self.stats.bytes_to_disk += self.block_bytes * down["disk"]
        self.stats.host_hit_tokens += self.block_size * up["host"]
        self.stats.bytes_from_host += self.block_bytes * up["host"]
        self.stats.disk_hit_tokens += self.block_size * up["disk"]
        self.stats.bytes_from_disk += self.block_bytes * up["disk"]
        return lost

    @torch.inference_mode()
    def move_states(self, swaps: BlockSwaps, pool: StatePool) -> set[int]:
        """Copy the checkpoints of evicted blocks out, then restored ones into their
        sequences' slots. Returns the slots that could not be filled (a disk file gone or
        damaged): their sequences must compute those tokens instead."""
        down, up, lost = _move(self.states, pool.tensors(), swaps.state_outs, swaps.state_ins)
        self.stats.checkpoints_to_host += down["host"]
        self.stats.checkpoints_to_disk += down["disk"]
        self.stats.checkpoints_from_host += up["host"]
        self.stats.checkpoints_from_disk += up["disk"]
        return lost


def _move(
    stack: TierStack,
    tensors: list[torch.Tensor],
    outs: list[tuple[int, bytes]],
    ins: list[tuple[bytes, int]],
) -> tuple[Counter[Tier], Counter[Tier], set[int]]:
    """Rows `outs` (row, key) of `tensors` saved down the stack, then rows named `ins`
    (key, row) restored into them; a row about to be restored is never pushed out to make
    room. Returns the copies made down and up, per tier, and the rows that could not be
    restored."""
    keep = {key for key, _ in ins}
    down: Counter[Tier] = Counter()
    for row, key in outs:
        down.update(stack.save([t[row] for t in tensors], key, keep))
    up: Counter[Tier] = Counter()
    lost = set()
    for key, row in ins:
        tier = stack.load(key, [t[row] for t in tensors])
        if tier is None:
            lost.add(row)
        else:
            up[tier] += 1
    return down, up, lost


def build_kv_tiers(
    config: EngineConfig,
    pool: KVPool,
    source: ModelSource,
    model_numerics: str,
    state_pool: StatePool | None = None,
) -> KVTiers | None:
    """The tiers the config asks for; None without host_kv_cache_memory. `model_numerics`
    (LoadedModel.numerics) keys the disk tier with the checkpoint. A hybrid model's state
    checkpoints (in `state_pool`) get up to STATE_SHARE of each tier, where that holds one
    beside the blocks."""
    if not config.host_kv_cache_memory:
        return None
    like = pool.tensors()
    block_bytes = pool.bytes_per_block
    state_bytes = _checkpoint_bytes(state_pool)
    host_states = _state_share(config.host_kv_cache_memory, state_bytes, block_bytes)
    num_slots = (config.host_kv_cache_memory - host_states * state_bytes) // block_bytes
    if num_slots < 1:
        raise InvalidRequestError(
            f"host_kv_cache_memory={config.host_kv_cache_memory} bytes holds no KV block "
            f"of {block_bytes} bytes"
        )
    host = HostKVTier(like, num_slots)
    disk = states_disk = None
    if config.disk_kv_cache_dir is not None:
        numerics = f"{model_numerics}|{config.load_format}"
        if config.load_format == "dummy":
            numerics += f"|seed {config.seed}"  # random weights are made from the seed
        fingerprint = kv_fingerprint(source, numerics, like)
        directory = Path(config.disk_kv_cache_dir).expanduser() / fingerprint
        states_like = state_pool.tensors() if host_states else None
        disk, states_disk = _disk_tiers(
            config, directory, like, block_bytes, states_like, state_bytes
        )
    states = None
    if host_states:
        states = TierStack(HostKVTier(state_pool.tensors(), host_states), states_disk)
    return KVTiers(host, disk, config.block_size, block_bytes, states)


def _disk_tiers(
    config: EngineConfig,
    directory: Path,
    like: list[torch.Tensor],
    block_bytes: int,
    states_like: list[torch.Tensor] | None,
    state_bytes: int,
) -> tuple[DiskKVTier, DiskKVTier | None]:
    """The disk tier of blocks under `directory`, and of state checkpoints (`states_like`:
    the state pool's tensors, None when they do not go down; `state_bytes` each) in its
    STATE_FOLDER, where STATE_SHARE of the bound holds two of them beside two blocks."""
    memory = config.disk_kv_cache_memory
    if memory < 2 * block_bytes:  # a block's file is a bit larger
        raise InvalidRequestError(
            f"disk_kv_cache_memory={memory} bytes must hold at least "
            f"two KV blocks of {block_bytes} bytes"
        )
    state_memory = 0
    if states_like is not None:
        state_memory = int(memory * STATE_SHARE)
        # A state's file is a bit larger than its bytes: room for two, or none at all.
        if state_memory < 2 * state_bytes or memory - state_memory < 2 * block_bytes:
            state_memory = 0
    blocks = DiskKVTier(directory, memory - state_memory, like)
    if not state_memory:
        return blocks, None
    return blocks, DiskKVTier(directory / STATE_FOLDER, state_memory, states_like)


def _checkpoint_bytes(state_pool: StatePool | None) -> int:
    """Bytes of one state checkpoint; 0 when the model keeps none."""
    if state_pool is None or not state_pool.checkpoints.num_slots:
        return 0
    return state_pool.bytes_per_sequence


def _state_share(memory: int, state_bytes: int, block_bytes: int) -> int:
    """How many state checkpoints STATE_SHARE of a host tier of `memory` bytes holds, if
    a KV block still fits beside them."""
    if not state_bytes:
        return 0
    count = int(memory * STATE_SHARE) // state_bytes
    return count if memory - count * state_bytes >= block_bytes else 0
