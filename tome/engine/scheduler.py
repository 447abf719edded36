"""Scheduler: continuous batching under a per-step token budget.

Each step serves every running decode first (a decode never waits more than one step). The
rest of the budget is shared among prompts, not taken by the oldest: each prompt already
being prefilled is first given a minimum share (so none starves), then running prefills and
waiting requests together get the rest in prefill order: priority first, then short prompts
before long ones, then arrival. So a short or higher-priority question that arrives while a
book is being read is admitted at the next step and answered within it or the one after,
while the book's prefill goes on; a prefill that gives way keeps its computed blocks.
PrefillPolicy bounds how many prompts are mid-prefill at once. When KV blocks run out, the
lowest-priority, newest running request is preempted: its blocks are freed and it is
recomputed later (its full blocks usually come back from the prefix cache). A model with
recurrent layers also gives each running sequence a slot of its state pool: taken at
admission (starting from the prefix cache's checkpoint where a hit ends), returned
wherever the blocks are (finish, abort, pinning, preemption)."""

import bisect
import math
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

from tome.engine.block_manager import BlockManager
from tome.engine.sequence import Sequence, SequenceStatus
from tome.engine.state_pool import StatePool
from tome.layers.layer_state import StateCheckpoint


@dataclass
class ScheduledBatch:
    """Sequences of one step with their token counts. Single-token entries (decodes, and
    prefill chunks of one token, which attend the same way) come first: the attention
    backends batch them together."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    # Where each sequence's recurrent state is saved as a checkpoint (state_pool.py); the
    # engine sets it once the batch is final. Empty: nowhere.
    state_checkpoints: list[StateCheckpoint | None] = field(default_factory=list)

    @property
    def num_decodes(self) -> int:
        return sum(1 for n in self.num_new_tokens if n == 1)

    @property
    def num_prefills(self) -> int:
        """Sequences computing prompt tokens this step (one-token chunks included)."""
        return sum(1 for seq in self.seqs if seq.num_computed_tokens < len(seq.prompt_token_ids))

    def __len__(self) -> int:
        return len(self.seqs)


@dataclass(frozen=True)
class PrefillPolicy:
    """How a step's budget is shared among prompts (EngineConfig documents each knob)."""

    max_num_partial_prefills: int = 4
    long_prefill_token_threshold: int = 2048
    # Small, because a question's step runs every long prompt at its share: 1/8 made that
    # step (and the question's first token) several times longer, and the books no faster
    # (BENCHMARKS.md, "Scheduling").
    prefill_min_share: float = 1 / 32


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_batched_tokens: int,
        max_num_seqs: int,
        policy: PrefillPolicy = PrefillPolicy(),
        state_pool: StatePool | None = None,
    ):
        self.block_manager = block_manager
        self.state_pool = state_pool
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.policy = policy
        self.waiting: list[Sequence] = []  # sorted by schedule_key
        self.running: list[Sequence] = []  # sorted by schedule_key
        self.num_preemptions = 0
        self.steps_by_prefills: Counter[int] = Counter()  # steps run, by prefills in them

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
        """Drop a sequence wherever it is, leaving its blocks to whoever holds it now. Its
        recurrent state cannot be handed on: it is freed."""
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self._free_state(seq)
        seq.status = SequenceStatus.FINISHED

    def schedule(self) -> ScheduledBatch:
        # One dict of sequence -> tokens this step; preemption removes its victims from it.
        scheduled: dict[Sequence, int] = {}
        budget = self._schedule_decodes(scheduled, self.max_num_batched_tokens)
        share = math.ceil(budget * self.policy.prefill_min_share)  # >= 1 token unless 0
        budget = self._give_minimum_shares(scheduled, budget, share)
        self._schedule_prefills(scheduled, budget, share)
        entries = sorted(scheduled.items(), key=lambda entry: entry[1] != 1)
        batch = ScheduledBatch([seq for seq, _ in entries], [n for _, n in entries])
        if batch.seqs:
            self.steps_by_prefills[batch.num_prefills] += 1
        return batch

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

    def _give_minimum_shares(self, scheduled: dict[Sequence, int], budget: int, share: int) -> int:
        """Each prompt being prefilled, oldest first, gets its minimum share of what the
        decodes left, whatever waits ahead of it in prefill order."""
        for seq in sorted(self._running_prefills(), key=lambda s: s.arrival):
            if budget == 0 or share == 0:
                break
            scheduled[seq] = min(seq.num_uncomputed_tokens, share, budget)
            budget -= scheduled[seq]
        return budget

    def _running_prefills(self) -> list[Sequence]:
        return [s for s in self.running if s.num_uncomputed_tokens > 1]

    def _schedule_prefills(self, scheduled: dict[Sequence, int], budget: int, share: int) -> None:
        """Running prefills and waiting requests share the rest in prefill order. A long
        prompt served after a shorter or higher-priority one gets no more than its share:
        the step stays short, so their first tokens come soon. A waiting request that
        cannot get a seat or blocks stops admissions for this step (those behind it would
        otherwise take what it waits for), not the running prefills."""
        admitting, waiting = True, set(self.waiting)  # not those this step preempts
        served: list[tuple[int, bool]] = []  # (priority, long) of the prompts given tokens
        candidates = [(self._prefill_order(s), s) for s in self._running_prefills() + self.waiting]
        for (priority, is_long, _), seq in sorted(candidates, key=lambda entry: entry[0]):
            if budget == 0:
                break
            yields = is_long and any(
                p < priority or (p == priority and not long) for p, long in served
            )
            if yields and share == 0:
                continue
            if seq.status is not SequenceStatus.RUNNING:
                if not (admitting and seq in waiting and self._may_start(seq, scheduled, budget)):
                    continue
                admitting = self._take_a_seat(seq, scheduled) and self._admit(seq, scheduled)
                if not admitting:
                    continue
            # This step's tokens for it in all, its minimum share included (counted after
            # admission, which may have found part of its prompt in the prefix cache).
            total = min(seq.num_uncomputed_tokens, share) if yields else seq.num_uncomputed_tokens
            more = min(max(0, total - scheduled.get(seq, 0)), budget)
            if more:
                scheduled[seq] = scheduled.get(seq, 0) + more
                budget -= more
                served.append((priority, is_long))

    def _prefill_order(self, seq: Sequence) -> tuple[int, bool, int]:
        """Priority, then short prompts before long ones, then arrival."""
        is_long = seq.num_uncomputed_tokens > self.policy.long_prefill_token_threshold
        return (seq.priority, is_long, seq.arrival)

    def _may_start(self, seq: Sequence, scheduled: dict[Sequence, int], budget: int) -> bool:
        """Whether a waiting request may start its prefill now: it does when it finishes
        within this step, when fewer than max_num_partial_prefills prompts stay
        mid-prefill, or when it outranks one of them (a paying tier's book does not wait
        for a free tier's)."""
        if seq.num_uncomputed_tokens <= budget:
            return True
        partial = [
            s for s in self._running_prefills() if s.num_uncomputed_tokens > scheduled.get(s, 0)
        ]
        return len(partial) < self.policy.max_num_partial_prefills or any(
            s.priority > seq.priority for s in partial
        )

    def _take_a_seat(self, seq: Sequence, scheduled: dict[Sequence, int]) -> bool:
        return len(self.running) < self.max_num_seqs or self._free_a_seat(seq, scheduled)

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
        if self.state_pool is not None:
            self.state_pool.allocate(seq)
        seq.status = SequenceStatus.RUNNING
        if seq.first_scheduled_at is None:
            seq.first_scheduled_at = time.monotonic()
        bisect.insort(self.running, seq, key=lambda s: s.schedule_key)
        return True

    def recompute_lost(
        self, batch: ScheduledBatch, lost_blocks: set[int], lost_states: Collection[int] = ()
    ) -> ScheduledBatch:
        """Blocks whose restore from a lower KV tier failed hold nothing valid: unname them
        and send the sequences holding them back to waiting, to compute those tokens; so
        too the sequences whose state slots (`lost_states`) missed their checkpoint."""
        self.block_manager.forget(lost_blocks)
        kept = ScheduledBatch()
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            if lost_blocks.isdisjoint(seq.block_table) and seq.state_slot not in lost_states:
                kept.seqs.append(seq)
                kept.num_new_tokens.append(n)
            else:
                self._preempt(seq, {})
        return kept

    def _preempt(self, seq: Sequence, scheduled: dict[Sequence, int]) -> None:
        scheduled.pop(seq, None)
        self.running.remove(seq)
        self.block_manager.free(seq)
        self._free_state(seq)  # recomputed from the first token, as its KV is
        self.num_preemptions += 1
        self.add(seq)

    def _free_state(self, seq: Sequence) -> None:
        if self.state_pool is not None:
            self.state_pool.free(seq)
