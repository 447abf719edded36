"""BlockManager: hands out fixed-size KV blocks and shares full ones between requests.

Automatic prefix caching: a full block is named by a hash chained over its parent's hash
and its own token ids, so equal names mean equal prefixes. Blocks nobody references keep
their contents and name in a least-recently-used free list until the space is needed."""

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from tome.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None


def chain_hash(parent: bytes | None, token_ids: list[int]) -> bytes:
    data = (parent or b"") + np.asarray(token_ids, dtype=np.int64).tobytes()
    return hashlib.blake2b(data, digest_size=16).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_blocks: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached_blocks: dict[bytes, int] = {}
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of those, found

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def allocate(self, seq: Sequence) -> bool:
        """Give a waiting sequence blocks for all its tokens, reusing cached prefix blocks.
        Returns False, changing nothing, when the pool cannot hold it now."""
        hits = self._cached_prefix(seq)
        new_needed = self.blocks_needed(seq.num_tokens) - len(hits)
        reusable_free = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        if new_needed > self.num_free_blocks - reusable_free:
            return False
        for block_id in hits:
            self._take(block_id)
        seq.block_table = list(hits)
        for _ in range(new_needed):
            seq.block_table.append(
                self._pop_free(after=seq.block_table[-1] if seq.block_table else None)
            )
        seq.num_computed_tokens = len(hits) * self.block_size
        seq.num_named_blocks = len(hits)
        if seq.num_cached_tokens is None:
            seq.num_cached_tokens = seq.num_computed_tokens
            self.prefix_queries += seq.num_tokens
            self.prefix_hits += seq.num_computed_tokens
        return True

    def append_slot(self, seq: Sequence) -> bool:
        """Make room for one more token; False when no block is free."""
        if seq.num_tokens <= len(seq.block_table) * self.block_size:
            return True
        if not self.free_blocks:
            return False
        seq.block_table.append(self._pop_free(after=seq.block_table[-1]))
        return True

    def free(self, seq: Sequence) -> None:
        """Release a sequence's blocks; the tail goes first so it is evicted first."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_blocks[block_id] = None
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_named_blocks = 0

    def register_computed(self, seq: Sequence) -> None:
        """Name the blocks that just became full and computed, so others can share them."""
        if not self.enable_prefix_caching:
            return
        full = seq.num_computed_tokens // self.block_size
        for i in range(seq.num_named_blocks, full):
            block = self.blocks[seq.block_table[i]]
            block_hash = self._block_hash(seq, i)
            if block.block_hash is None and block_hash not in self.cached_blocks:
                block.block_hash = block_hash
                self.cached_blocks[block_hash] = block.block_id
        seq.num_named_blocks = max(seq.num_named_blocks, full)

    def _cached_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks matching the sequence's leading full blocks. The last token is
        always recomputed, since its logits are needed."""
        if not self.enable_prefix_caching:
            return []
        hits: list[int] = []
        for i in range((seq.num_tokens - 1) // self.block_size):
            block_id = self.cached_blocks.get(self._block_hash(seq, i))
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def _block_hash(self, seq: Sequence, index: int) -> bytes:
        """The chain hash of the sequence's full block `index`, memoized on the sequence."""
        while len(seq.block_hashes) <= index:
            i = len(seq.block_hashes)
            parent = seq.block_hashes[-1] if i else None
            tokens = seq.token_ids[i * self.block_size : (i + 1) * self.block_size]
            seq.block_hashes.append(chain_hash(parent, tokens))
        return seq.block_hashes[index]

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_blocks[block_id]
        block.ref_count += 1

    def _pop_free(self, after: int | None) -> int:
        """A free block: the one right after `after` when free and holding no cached prefix,
        so a sequence's blocks stay consecutive and attention can read them without a
        gather; else the LRU one (cached blocks are evicted in LRU order only)."""
        nxt = None if after is None else after + 1
        if nxt in self.free_blocks and self.blocks[nxt].block_hash is None:
            block_id = nxt
            del self.free_blocks[block_id]
        else:
            block_id, _ = self.free_blocks.popitem(last=False)
        block = self.blocks[block_id]
        if block.block_hash is not None:
            del self.cached_blocks[block.block_hash]
            block.block_hash = None
        block.ref_count = 1
        return block_id
