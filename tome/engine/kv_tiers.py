"""KVTiers: host memory (and optionally disk) below the device KV pool, after Mooncake's
KV-centric design and vLLM/LMCache CPU offloading: a cached prefix block the device pool
evicts is kept lower down and copied back on a later hit instead of being recomputed.

The block manager only names the moves (BlockSwaps); `apply` makes them at the start of a
step, before the forward pass overwrites or reads those blocks: evicted blocks out first,
then restored blocks in. A restored block stays in its tier, so evicting it from the device
again costs no copy. When the host tier is full its least recently used block is dropped.

The disk is written through: a block saved to host memory is written to disk at once, not
when host memory pushes it out. Otherwise the blocks that stay in host memory (a book's
first blocks, say, kept warm by every hit) would never reach the disk, and a restarted
engine would find the rest of the book there but not its start.

A hybrid model's recurrent-state checkpoints (state_checkpoints.py) do not move here: they
stay in the state pool, so a block restored from a tier is a hit only up to the last block
whose checkpoint is still in memory (the block manager stops the hit there)."""

from dataclasses import dataclass
from pathlib import Path

import torch

from tome.engine.block_manager import BlockSwaps
from tome.engine.config import EngineConfig
from tome.engine.disk_kv_tier import DiskKVTier, kv_fingerprint
from tome.engine.host_kv_tier import HostKVTier
from tome.engine.kv_cache import KVPool
from tome.errors import InvalidRequestError
from tome.loader.model_source import ModelSource


@dataclass
class KVTierStats:
    """Prefix-cache traffic since the engine started. Hits are tokens whose KV was reused
    rather than computed, counted at every admission of a request (again after a
    preemption); bytes are block contents copied between tiers."""

    device_hit_tokens: int = 0
    host_hit_tokens: int = 0
    disk_hit_tokens: int = 0
    bytes_to_host: int = 0
    bytes_from_host: int = 0
    bytes_to_disk: int = 0
    bytes_from_disk: int = 0


class KVTiers:
    def __init__(
        self, host: HostKVTier, disk: DiskKVTier | None, block_size: int, block_bytes: int
    ) -> None:
        self.host = host
        self.disk = disk
        self.block_size = block_size
        self.block_bytes = block_bytes
        self.stats = KVTierStats()

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self.host or (self.disk is not None and block_hash in self.disk)

    @torch.inference_mode()
    def apply(self, swaps: BlockSwaps, pool: KVPool) -> set[int]:
        """Copy evicted blocks out, then restored blocks in. Returns the device blocks that
        could not be restored (a disk file gone or damaged): their contents are not valid."""
        tensors = pool.tensors()
        # A block about to be restored must not be pushed out of its tier to make room.
        keep = {block_hash for block_hash, _ in swaps.ins}
        for block_id, block_hash in swaps.outs:
            self._save(tensors, block_id, block_hash, keep)
        return {
            block_id
            for block_hash, block_id in swaps.ins
            if not self._load(tensors, block_hash, block_id)
        }

    def _save(
        self, tensors: list[torch.Tensor], block_id: int, block_hash: bytes, keep: set[bytes]
    ) -> None:
        if block_hash in self.host:
            self.host.touch(block_hash)
        elif not self._store_in_host([t[block_id] for t in tensors], block_hash, keep):
            return  # every host block is about to be restored; this one is dropped
        if self.disk is not None:
            self._write_through(block_hash, keep)

    def _store_in_host(self, rows: list[torch.Tensor], block_hash: bytes, keep: set[bytes]) -> bool:
        if self.host.is_full:
            victim = self.host.least_recent(keep)
            if victim is None:
                return False
            self.host.remove(victim)
        self.host.store(block_hash, rows)
        self.stats.bytes_to_host += self.block_bytes
        return True

    def _write_through(self, block_hash: bytes, keep: set[bytes]) -> None:
        if block_hash in self.disk:
            self.disk.touch(block_hash)
            return
        self.host.wait_for_copies()
        if self.disk.save(block_hash, self.host.rows(block_hash), keep):
            self.stats.bytes_to_disk += self.block_bytes

    def _load(self, tensors: list[torch.Tensor], block_hash: bytes, block_id: int) -> bool:
        if block_hash in self.host:
            rows = self.host.rows(block_hash)
            self.stats.host_hit_tokens += self.block_size
            self.stats.bytes_from_host += self.block_bytes
        else:
            rows = self.disk.load(block_hash) if self.disk is not None else None
            if rows is None:
                return False
            self.stats.disk_hit_tokens += self.block_size
            self.stats.bytes_from_disk += self.block_bytes
        for dst, src in zip(tensors, rows, strict=True):
            dst[block_id].copy_(src, non_blocking=True)
        return True


def build_kv_tiers(
    config: EngineConfig, pool: KVPool, source: ModelSource, model_numerics: str
) -> KVTiers | None:
    """The tiers the config asks for; None without host_kv_cache_memory. `model_numerics`
    (LoadedModel.numerics) keys the disk tier with the checkpoint."""
    if not config.host_kv_cache_memory:
        return None
    like = pool.tensors()
    block_bytes = pool.bytes_per_block
    num_slots = config.host_kv_cache_memory // block_bytes
    if num_slots < 1:
        raise InvalidRequestError(
            f"host_kv_cache_memory={config.host_kv_cache_memory} bytes holds no KV block "
            f"of {block_bytes} bytes"
        )
    host = HostKVTier(like, num_slots)
    disk = None
    if config.disk_kv_cache_dir is not None:
        if config.disk_kv_cache_memory < 2 * block_bytes:  # a block's file is a bit larger
            raise InvalidRequestError(
                f"disk_kv_cache_memory={config.disk_kv_cache_memory} bytes must hold at least "
                f"two KV blocks of {block_bytes} bytes"
            )
        numerics = f"{model_numerics}|{config.load_format}"
        if config.load_format == "dummy":
            numerics += f"|seed {config.seed}"  # random weights are made from the seed
        fingerprint = kv_fingerprint(source, numerics, like)
        directory = Path(config.disk_kv_cache_dir).expanduser() / fingerprint
        disk = DiskKVTier(directory, config.disk_kv_cache_memory, like)
    return KVTiers(host, disk, config.block_size, block_bytes)
