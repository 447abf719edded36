"""StateCheckpoints: a hybrid model's recurrent state saved at KV block boundaries, so a
prefix-cache hit has a state to resume from.

A KV block is enough to resume attention layers, but a recurrent layer needs its state
after the prefix's last token, and that state is overwritten by every later token. So
while a sequence runs, its state at some block boundaries is copied into checkpoint slots
of the state pool (state_pool.py), each keyed by the chain hash of the block it ends
(block_manager.py): that hash names the whole prefix, so equal keys mean equal states. A
prefix-cache hit for a hybrid model counts only up to the last block that has a
checkpoint (BlockManager truncates it), and the new sequence's slot starts as a copy of
that checkpoint.

Which boundaries (checkpoint_block): each step saves a sequence's state at the last block
boundary its chunk crosses, split out of the chunk inside the layer, so nothing about
chunking changes. For the prompt's last chunk that is the end of its last full block,
where a request continuing a named context resumes; for a decode step, the block its
token completes. A sequence keeps only its latest PER_SEQUENCE checkpoints within its
prompt: the whole prompt's, and the one where the previous chunk ended, from which a
different question about the same document resumes (recomputing at most one chunk).
Without the bound a book read in a hundred chunks would leave a hundred states. Past its
prompt it keeps one, the latest, each replacing the one before in the same slot: so when
the answer ends, the state at its last full block is saved, and the next turn of the
conversation (that prompt, that answer, a new question) resumes after the answer, as a
model without recurrent layers does from its blocks alone.

The pool of checkpoint slots is bounded too (EngineConfig.max_state_checkpoints, out of
kv_cache_memory): when it is full the least recently used checkpoint goes. A named context
pins the checkpoint at the end of its pinned blocks. When the block manager evicts a
block, its checkpoint goes with it: down to the host and disk tiers with the block where
there are such tiers (kv_tiers.py; a hit restores both), else for good.

This class only keeps the books (which slot holds which hash); the pool copies."""

from collections import Counter, OrderedDict

from tome.engine.sequence import Sequence

PER_SEQUENCE = 2  # checkpoints a sequence keeps within its prompt
PER_ANSWER = 1  # and past it


def checkpoint_block(start: int, num_new: int, block_size: int) -> int | None:
    """The block at whose end a chunk of `num_new` tokens from `start` saves the state: the
    last one it completes, or None when it completes none."""
    blocks = (start + num_new) // block_size
    return blocks - 1 if blocks * block_size > start else None


def _kept(seq: Sequence, answer: bool) -> list[bytes]:
    return seq.answer_checkpoints if answer else seq.state_checkpoints


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

    def reserve(self, seq: Sequence, answer: bool = False) -> int | None:
        """A slot to save a checkpoint of `seq` into, within its prompt or past it
        (`answer`). A sequence holding as many there as it keeps (PER_SEQUENCE,
        PER_ANSWER) first gives up its oldest; then a free slot is taken, else the least
        recently used unpinned checkpoint's; None when every slot is pinned (or none)."""
        kept = _kept(seq, answer)
        if len(kept) >= (PER_ANSWER if answer else PER_SEQUENCE):
            self.discard(kept.pop(0))
        if self._free:
            return self._free.pop()
        if not self._unpinned:
            return None
        oldest, _ = self._unpinned.popitem(last=False)
        return self._slots.pop(oldest)

    def commit(self, slot: int, block_hash: bytes, seq: Sequence, answer: bool = False) -> None:
        """A reserved slot now holds `seq`'s state at the end of block `block_hash`."""
        self._slots[block_hash] = slot
        self._unpinned[block_hash] = None
        _kept(seq, answer).append(block_hash)

    def discard(self, block_hash: bytes) -> int | None:
        """Drop a checkpoint, unless it is pinned: nobody can resume from it any more, or
        it moves to a lower tier with its block. Returns the slot it held, free again at
        once (nothing writes a checkpoint slot before the next forward, and a move copies
        it out before that), or None when there was nothing to drop."""
        if block_hash not in self._unpinned:
            return None
        del self._unpinned[block_hash]
        slot = self._slots.pop(block_hash)
        self._free.append(slot)
        return slot

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
