"""StateCheckpoints: a hybrid model's recurrent state saved at KV block boundaries, so a
prefix-cache hit has a state to resume from.

A KV block is enough to resume attention layers, but a recurrent layer needs its state
after the prefix's last token, and that state is overwritten by every later token. So
while a sequence's prompt is prefilled, its state at some block boundaries is copied into
checkpoint slots of the state pool (state_pool.py), each keyed by the chain hash of the
block it ends (block_manager.py): that hash names the whole prefix, so equal keys mean
equal states. A prefix-cache hit for a hybrid model counts only up to the last block that
has a checkpoint (BlockManager truncates it), and the new sequence's slot starts as a copy
of that checkpoint.

Which boundaries (checkpoint_block): each prefill chunk saves the state at the last
prompt block boundary it crosses, split out of the chunk inside the layer, so nothing
about chunking changes. For the prompt's last chunk that is the end of its last full
block, where a conversation's next turn or a request continuing a named context resumes.
A sequence keeps only its latest PER_SEQUENCE checkpoints: the whole prompt's, and the
one where the previous chunk ended, from which a different question about the same
document resumes (recomputing at most one chunk). Without the bound a book read in a
hundred chunks would leave a hundred states.

The pool of checkpoint slots is bounded too (EngineConfig.max_state_checkpoints, out of
kv_cache_memory): when it is full the least recently used checkpoint goes. A checkpoint
goes with its block when the block manager evicts that block with no lower tier to keep
it. A named context pins the checkpoint at the end of its pinned blocks. With host or disk
KV tiers the checkpoints stay in memory only: a block restored from a tier is a hit up to
the last block whose checkpoint is still here, no further.

This class only keeps the books (which slot holds which hash); the pool copies."""

from collections import Counter, OrderedDict

from tome.engine.sequence import Sequence

PER_SEQUENCE = 2


def checkpoint_block(start: int, num_new: int, prompt_len: int, block_size: int) -> int | None:
    """The prompt block at whose end a chunk of `num_new` tokens from `start` saves the
    state: the last one it completes, or None when it completes none."""
    end = min(start + num_new, prompt_len)
    blocks = end // block_size
    return blocks - 1 if blocks * block_size > start else None


class StateCheckpoints:
    def __init__(self, slots: range) -> None:
        """Bookkeeping for checkpoints in `slots` of the state pool."""
        self.num_slots = len(slots)
        self._free = list(reversed(slots))
        self._slots: dict[bytes, int] = {}  # block hash -> slot, every saved checkpoint
        self._unpinned: OrderedDict[bytes, None] = OrderedDict()  # LRU order, oldest first
        self._pins: Counter[bytes] = Counter()

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._slots

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_pinned(self) -> int:
        return len(self._pins)

    def slot_of(self, block_hash: bytes) -> int:
        """The slot of a saved checkpoint, now the most recently used."""
        self.touch(block_hash)
        return self._slots[block_hash]

    def touch(self, block_hash: bytes) -> None:
        """Mark a saved checkpoint as the most recently used."""
        if block_hash in self._unpinned:
            self._unpinned.move_to_end(block_hash)

    def reserve(self, seq: Sequence) -> int | None:
        """A slot to save a checkpoint of `seq` into. A sequence holding PER_SEQUENCE
        checkpoints first gives up its oldest; then a free slot is taken, else the least
        recently used unpinned checkpoint's; None when every slot is pinned (or none)."""
        if len(seq.state_checkpoints) >= PER_SEQUENCE:
            self.discard(seq.state_checkpoints.pop(0))
        if self._free:
            return self._free.pop()
        if not self._unpinned:
            return None
        oldest, _ = self._unpinned.popitem(last=False)
        return self._slots.pop(oldest)

    def commit(self, slot: int, block_hash: bytes, seq: Sequence) -> None:
        """A reserved slot now holds `seq`'s state at the end of block `block_hash`."""
        self._slots[block_hash] = slot
        self._unpinned[block_hash] = None
        seq.state_checkpoints.append(block_hash)

    def discard(self, block_hash: bytes) -> None:
        """Drop a checkpoint nobody can resume from any more, unless it is pinned."""
        if block_hash in self._unpinned:
            del self._unpinned[block_hash]
            self._free.append(self._slots.pop(block_hash))

    def pin(self, block_hash: bytes) -> bool:
        """Keep a checkpoint until unpinned (a named context's); False if there is none."""
        if block_hash not in self._slots:
            return False
        self._pins[block_hash] += 1
        self._unpinned.pop(block_hash, None)
        return True

    def unpin(self, block_hash: bytes) -> None:
        self._pins[block_hash] -= 1
        if not self._pins[block_hash]:
            del self._pins[block_hash]
            self._unpinned[block_hash] = None
