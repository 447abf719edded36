"""BlockManager: hands out fixed-size KV blocks and shares full ones between requests.

Automatic prefix caching: a full block is named by a hash chained over its parent's hash
and its own token ids, so equal names mean equal prefixes. Blocks nobody references keep
their contents and name in a least-recently-used free list until the space is needed.

With lower tiers (host memory, disk; see kv_tiers.py) an evicted named block is saved
there instead of lost, and a prefix found there is restored into a fresh block. This class
holds no tensors: it records those copies as BlockSwaps, which the engine makes before
the step's forward pass.

A hybrid model's recurrent layers resume only from a saved state (state_checkpoints.py):
for such a model a hit ends at the last block whose state is checkpointed, in memory or
in a lower tier. An evicted block's checkpoint goes with it: down beside the block where
the tiers keep states, for good where there are no tiers."""

import hashlib
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass, field

import numpy as np

from tome.engine.sequence import Sequence
from tome.engine.state_checkpoints import StateCheckpoints


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None


@dataclass
class BlockSwaps:
    """Block copies one step needs, made outs first: `outs` saves evicted named blocks
    (block id, hash) to the lower tiers before anything overwrites them; `ins` restores
    blocks found there (hash, block id) before the forward pass reads them. A hybrid
    model's state checkpoints move alike: `state_outs` (checkpoint slot, block hash) go
    down with their blocks, `state_ins` (block hash, sequence's state slot) come back
    into the slots of sequences whose hit ends there (StatePool.take_restores)."""

    outs: list[tuple[int, bytes]] = field(default_factory=list)
    ins: list[tuple[bytes, int]] = field(default_factory=list)
    state_outs: list[tuple[int, bytes]] = field(default_factory=list)
    state_ins: list[tuple[bytes, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.outs or self.ins or self.state_outs or self.state_ins)


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
        self.prefix_hits = 0  # of those, found (on the device or restored from below)
        self.device_hit_tokens = 0  # tokens found on the device, at every admission
        # Hashes held below the device (host memory, disk); the engine sets it when it
        # has lower tiers. None: evicted blocks are lost and nothing is restored.
        self.lower_tiers: Container[bytes] | None = None
        # A hybrid model's state checkpoints, which the engine sets; None: no recurrent
        # state, a hit may end at any block.
        self.state_checkpoints: StateCheckpoints | None = None
        # Hashes whose checkpoints the lower tiers hold, set by the engine when they keep
        # states. None: checkpoints stay in memory (LRU) whatever tier their block is in.
        self.lower_states: Container[bytes] | None = None
        self._swap_outs: list[tuple[int, bytes]] = []
        self._state_outs: list[tuple[int, bytes]] = []
        self._swap_ins: dict[int, bytes] = {}  # block id -> hash to restore into it

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
        Returns False, changing nothing, when the pool cannot hold it now. Blocks of the
        prefix found only in a lower tier take fresh blocks and are restored into them."""
        hits = self._cached_prefix(seq)
        on_device = [block_id for _, block_id in hits if block_id is not None]
        new_needed = self.blocks_needed(seq.num_tokens) - len(on_device)
        reusable_free = sum(1 for b in on_device if self.blocks[b].ref_count == 0)
        if new_needed > self.num_free_blocks - reusable_free:
            return False
        for block_id in on_device:  # first, so that taking fresh blocks cannot evict them
            self._take(block_id)
        seq.block_table = []
        for block_hash, block_id in hits:
            if block_id is None:
                block_id = self._restore(block_hash, self._next_free(seq))
            seq.block_table.append(block_id)
        for _ in range(self.blocks_needed(seq.num_tokens) - len(hits)):
            seq.block_table.append(self._next_free(seq))
        self.device_hit_tokens += len(on_device) * self.block_size
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
        self.truncate(seq, 0)

    def truncate(self, seq: Sequence, num_blocks: int) -> None:
        """Keep only the first num_blocks blocks of a sequence, releasing the rest."""
        for block_id in reversed(seq.block_table[num_blocks:]):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_blocks[block_id] = None
        del seq.block_table[num_blocks:]
        seq.num_computed_tokens = min(seq.num_computed_tokens, num_blocks * self.block_size)
        seq.num_named_blocks = min(seq.num_named_blocks, num_blocks)

    def register_computed(self, seq: Sequence) -> None:
        """Name the blocks that just became full and computed, so others can share them."""
        if not self.enable_prefix_caching:
            return
        full = seq.num_computed_tokens // self.block_size
        for i in range(seq.num_named_blocks, full):
            block = self.blocks[seq.block_table[i]]
            block_hash = self.block_hash(seq, i)
            if block.block_hash is None and block_hash not in self.cached_blocks:
                block.block_hash = block_hash
                self.cached_blocks[block_hash] = block.block_id
        seq.num_named_blocks = max(seq.num_named_blocks, full)

    def take_swaps(self) -> BlockSwaps:
        """The copies recorded since the last call, for the engine to make now."""
        swaps = BlockSwaps(
            self._swap_outs, [(h, b) for b, h in self._swap_ins.items()], self._state_outs
        )
        self._swap_outs, self._swap_ins, self._state_outs = [], {}, []
        return swaps

    def forget(self, block_ids: set[int]) -> None:
        """Unname blocks whose contents are not what their name says (a failed restore)."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.block_hash is not None:
                del self.cached_blocks[block.block_hash]
                block.block_hash = None

    def _cached_prefix(self, seq: Sequence) -> list[tuple[bytes, int | None]]:
        """(hash, device block or None when only a lower tier has it) for the sequence's
        leading full blocks found cached, within the tokens it may take from the cache (the
        last one and unscored prompt logprobs are recomputed); for a hybrid model, up to
        the last of them whose state is checkpointed, in memory or below."""
        if not self.enable_prefix_caching:
            return []
        hits: list[tuple[bytes, int | None]] = []
        for i in range(seq.num_cacheable_tokens // self.block_size):
            block_hash = self.block_hash(seq, i)
            block_id = self.cached_blocks.get(block_hash)
            if block_id is None and not self._in_lower_tiers(block_hash):
                break
            hits.append((block_hash, block_id))
        if self.state_checkpoints is not None:
            while hits and not self._has_state(hits[-1][0]):
                hits.pop()
        return hits

    def _in_lower_tiers(self, block_hash: bytes) -> bool:
        return self.lower_tiers is not None and block_hash in self.lower_tiers

    def _has_state(self, block_hash: bytes) -> bool:
        in_lower = self.lower_states is not None and block_hash in self.lower_states
        return block_hash in self.state_checkpoints or in_lower

    def _restore(self, block_hash: bytes, block_id: int) -> int:
        """Name a fresh block `block_hash`, to be filled from a lower tier. Named at once:
        the copy precedes the forward pass, so others may share it in this very step."""
        self.blocks[block_id].block_hash = block_hash
        self.cached_blocks[block_hash] = block_id
        self._swap_ins[block_id] = block_hash
        return block_id

    def block_hash(self, seq: Sequence, index: int) -> bytes:
        """The chain hash of the sequence's full block `index`, memoized on the sequence."""
        while len(seq.block_hashes) <= index:
            i = len(seq.block_hashes)
            parent = seq.block_hashes[-1] if i else seq.kv_namespace
            tokens = seq.token_ids[i * self.block_size : (i + 1) * self.block_size]
            seq.block_hashes.append(chain_hash(parent, tokens))
        return seq.block_hashes[index]

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_blocks[block_id]
        block.ref_count += 1

    def _next_free(self, seq: Sequence) -> int:
        return self._pop_free(after=seq.block_table[-1] if seq.block_table else None)

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
            self._evict(block)
        block.ref_count = 1
        return block_id

    def _evict(self, block: Block) -> None:
        """Drop a free block's name; with lower tiers, save its contents there first, and
        its state checkpoint with it where they keep states. A block restored in this same
        step holds nothing yet: its restore is cancelled, and the lower tier still has it."""
        del self.cached_blocks[block.block_hash]
        restoring = self._swap_ins.pop(block.block_id, None) is not None
        if self.lower_tiers is not None and not restoring:
            self._swap_outs.append((block.block_id, block.block_hash))
            if self.lower_states is not None:
                slot = self.state_checkpoints.discard(block.block_hash)
                if slot is not None:  # not pinned: it leaves memory with its block
                    self._state_outs.append((slot, block.block_hash))
        elif self.lower_tiers is None and self.state_checkpoints is not None:
            # The prefix is gone for good, so is any resuming from its state.
            self.state_checkpoints.discard(block.block_hash)
        block.block_hash = None
