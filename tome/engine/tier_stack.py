"""TierStack: host memory above an optional disk, for rows of one set of device tensors,
each row named by a block's chain hash. KVTiers (kv_tiers.py) keeps two: one for KV blocks,
one for a hybrid model's state checkpoints.

A saved row goes to host memory (least recently used out first, never one about to be
restored) and is written through to disk at once, not when host memory pushes it out:
otherwise the rows kept warm in host memory by every hit (a book's first blocks, say)
would never reach the disk, and a restarted engine would find the rest of the book there
but not its start. Host memory is inclusive: a restored row stays there, so saving it
again costs no copy."""

from collections.abc import Collection
from typing import Literal

import torch

from tome.engine.disk_kv_tier import DiskKVTier
from tome.engine.host_kv_tier import HostKVTier

Tier = Literal["host", "disk"]


class TierStack:
    def __init__(self, host: HostKVTier, disk: DiskKVTier | None) -> None:
        self.host = host
        self.disk = disk

    def __contains__(self, key: object) -> bool:
        return key in self.host or (self.disk is not None and key in self.disk)

    def save(self, rows: list[torch.Tensor], key: bytes, keep: Collection[bytes]) -> set[Tier]:
        """Keep a device row (`rows`: its view in each tensor) under `key`, pushing out
        no row in `keep`. Returns the tiers it was copied to: none when host memory had it
        already, or had no room beside `keep` (the row is then dropped)."""
        copied: set[Tier] = set()
        if key in self.host:
            self.host.touch(key)
        elif self._store_in_host(rows, key, keep):
            copied.add("host")
        else:
            return copied
        if self.disk is not None and self._write_through(key, keep):
            copied.add("disk")
        return copied

    def load(self, key: bytes, rows: list[torch.Tensor]) -> Tier | None:
        """Copy the row named `key` into the device row `rows`. Returns the tier it came
        from, or None when none could give it (a disk file gone or damaged)."""
        if key in self.host:
            source, tier = self.host.rows(key), "host"
        else:
            source, tier = self.disk.load(key) if self.disk is not None else None, "disk"
            if source is None:
                return None
        for dst, src in zip(rows, source, strict=True):
            dst.copy_(src, non_blocking=True)
        return tier

    def _store_in_host(self, rows: list[torch.Tensor], key: bytes, keep: Collection[bytes]) -> bool:
        if self.host.is_full:
            victim = self.host.least_recent(keep)
            if victim is None:
                return False
            self.host.remove(victim)
        self.host.store(key, rows)
        return True

    def _write_through(self, key: bytes, keep: Collection[bytes]) -> bool:
        if key in self.disk:
            self.disk.touch(key)
            return False
        self.host.wait_for_copies()
        return self.disk.save(key, self.host.rows(key), keep)
