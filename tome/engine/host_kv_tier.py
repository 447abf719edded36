"""HostKVTier: a bounded pool in host memory for cached prefix blocks the device evicted.

It has the device pool's layout (one tensor per device pool tensor, the block leading), so
a block moves in or out by copying one row of each. Slots are named by the block's chain
hash and reused in least-recently-used order. On CUDA the memory is pinned: copies to and
from it are DMA transfers that need not wait for the CPU."""

from collections import OrderedDict
from collections.abc import Collection

import torch


class HostKVTier:
    def __init__(self, like: list[torch.Tensor], num_slots: int) -> None:
        self.device = like[0].device  # of the pool it serves
        pin = self.device.type == "cuda"
        self.tensors = [
            torch.empty((num_slots, *t.shape[1:]), dtype=t.dtype, pin_memory=pin) for t in like
        ]
        self.num_slots = num_slots
        self._slots: OrderedDict[bytes, int] = OrderedDict()  # least recently used first
        self._free = list(range(num_slots))

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._slots

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def is_full(self) -> bool:
        return not self._free

    def rows(self, block_hash: bytes) -> list[torch.Tensor]:
        """The stored block, as views of its slot in each tensor."""
        slot = self._slots[block_hash]
        return [t[slot] for t in self.tensors]

    def touch(self, block_hash: bytes) -> None:
        self._slots.move_to_end(block_hash)

    def least_recent(self, keep: Collection[bytes]) -> bytes | None:
        """The least recently used block not in `keep`; None when every block is kept."""
        return next((h for h in self._slots if h not in keep), None)

    def remove(self, block_hash: bytes) -> None:
        self._free.append(self._slots.pop(block_hash))

    def wait_for_copies(self) -> None:
        """Copies into pinned memory run asynchronously: wait before the CPU reads a slot."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def store(self, block_hash: bytes, rows: list[torch.Tensor]) -> None:
        """Copy a block in (a free slot must exist). Asynchronous from a CUDA device."""
        slot = self._free.pop()
        for dst, src in zip(self.tensors, rows, strict=True):
            dst[slot].copy_(src, non_blocking=True)
        self._slots[block_hash] = slot
