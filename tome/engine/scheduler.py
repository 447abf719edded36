"""Scheduler: continuous batching under a per-step token budget.

Each step serves running decodes first, then continues chunked prefills, then admits
waiting requests in priority order. When KV blocks run out, the lowest-priority, newest
running request is preempted: its blocks are freed and it is recomputed later (its full
blocks usually come back from the prefix cache)."""

import bisect
from dataclasses import dataclass, field

from tome.engine.block_manager import BlockManager
from tome.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """Sequences of one step with their token counts. Single-token entries (decodes, and
    prefill chunks of one token, which attend the same way) come first: the attention
    backends batch them together."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)

    @property
    def num_decodes(self) -> int:
        return sum(1 for n in self.num_new_tokens if n == 1)

    def __len__(self) -> int:
        return len(self.seqs)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_batched_tokens: int, max_num_seqs: int):
        self.block_manager = block_manager
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.waiting: list[Sequence] = []  # sorted by schedule_key
        self.running: list[Sequence] = []  # sorted by schedule_key
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        bisect.insort(self.waiting, seq, key=lambda s: s.schedule_key)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence) -> None:
        """Drop a sequence wherever it is and release its blocks."""
        self.detach(seq)
        self.block_manager.free(seq)

    def detach(self, seq: Sequence) -> None:
        """Drop a sequence wherever it is, leaving its blocks to whoever holds it now."""
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED

    def schedule(self) -> ScheduledBatch:
        # One dict of sequence -> tokens this step; preemption removes its victims from it.
        scheduled: dict[Sequence, int] = {}
        budget = self._schedule_decodes(scheduled, self.max_num_batched_tokens)
        budget = self._schedule_running_prefills(scheduled, budget)
        self._schedule_waiting(scheduled, budget)
        entries = sorted(scheduled.items(), key=lambda entry: entry[1] != 1)
        return ScheduledBatch([seq for seq, _ in entries], [n for _, n in entries])

    def _schedule_decodes(self, scheduled: dict[Sequence, int], budget: int) -> int:
        """Every running decode first, even below a higher-priority chunked prefill, which
        would otherwise take the budget and stall them."""
        for seq in list(self.running):
            if budget == 0:
                break
            # Skips prefills, and sequences preempted earlier in this loop.
            is_decode = seq.status is SequenceStatus.RUNNING and seq.num_uncomputed_tokens == 1
            if is_decode and self._reserve_slot(seq, scheduled):
                scheduled[seq] = 1
                budget -= 1
        return budget

    def _schedule_running_prefills(self, scheduled: dict[Sequence, int], budget: int) -> int:
        for seq in self.running:
            if budget == 0:
                break
            if seq.num_uncomputed_tokens > 1:
                scheduled[seq] = min(seq.num_uncomputed_tokens, budget)
                budget -= scheduled[seq]
        return budget

    def _schedule_waiting(self, scheduled: dict[Sequence, int], budget: int) -> None:
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            if len(self.running) >= self.max_num_seqs and not self._free_a_seat(seq, scheduled):
                break
            if not self._admit(seq, scheduled):
                break
            scheduled[seq] = min(seq.num_uncomputed_tokens, budget)
            budget -= scheduled[seq]

    def _reserve_slot(self, seq: Sequence, scheduled: dict[Sequence, int]) -> bool:
        """Find a slot for seq's next token, preempting lower-ranked sequences if needed."""
        while not self.block_manager.append_slot(seq):
            victim = self.running[-1]
            self._preempt(victim, scheduled)
            if victim is seq:
                return False
        return True

    def _free_a_seat(self, seq: Sequence, scheduled: dict[Sequence, int]) -> bool:
        """All max_num_seqs seats are taken: a waiting sequence takes one from the lowest
        running one only if that one has a strictly lower priority (as with KV blocks)."""
        victim = self.running[-1]
        if victim.priority <= seq.priority:
            return False
        self._preempt(victim, scheduled)
        return True

    def _admit(self, seq: Sequence, scheduled: dict[Sequence, int]) -> bool:
        """Allocate a waiting sequence's blocks, preempting only strictly lower priorities."""
        while not self.block_manager.allocate(seq):
            victim = self.running[-1] if self.running else None
            if victim is None or victim.priority <= seq.priority:
                return False
            self._preempt(victim, scheduled)
        self.waiting.remove(seq)
        seq.status = SequenceStatus.RUNNING
        bisect.insort(self.running, seq, key=lambda s: s.schedule_key)
        return True

    def recompute_lost(self, batch: ScheduledBatch, lost_blocks: set[int]) -> ScheduledBatch:
        """Blocks whose restore from a lower KV tier failed hold nothing valid: unname them
        and send the sequences holding them back to waiting, to compute those tokens."""
        self.block_manager.forget(lost_blocks)
        kept = ScheduledBatch()
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            if lost_blocks.isdisjoint(seq.block_table):
                kept.seqs.append(seq)
                kept.num_new_tokens.append(n)
            else:
                self._preempt(seq, {})
        return kept

    def _preempt(self, seq: Sequence, scheduled: dict[Sequence, int]) -> None:
        scheduled.pop(seq, None)
        self.running.remove(seq)
        self.block_manager.free(seq)
        self.num_preemptions += 1
        self.add(seq)
