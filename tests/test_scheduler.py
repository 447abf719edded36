"""Scheduler on hand-built Sequences with a fake model: the per-step token budget, chunked
prefill, decodes before prefills, admission by priority, preemption and max_num_seqs.

`step` does what Engine._postprocess does around the scheduler; the "model" makes each
next token a function of the request and position, so a recomputed (preempted) request
must produce the same tokens as an undisturbed one."""

import itertools

from tome.engine.block_manager import BlockManager
from tome.engine.detokenizer import IncrementalDetokenizer
from tome.engine.sampling_params import SamplingParams
from tome.engine.scheduler import PrefillPolicy, ScheduledBatch, Scheduler
from tome.engine.sequence import Sequence, SequenceStatus

BS = 4
_ids = itertools.count()


class StubTokenizer:
    def decode(self, ids, skip_special_tokens=True) -> str:
        return ""


def make_seq(num_prompt: int, priority: int = 0, max_tokens: int = 4, base: int = 0) -> Sequence:
    tokens = [base + i for i in range(num_prompt)]
    params = SamplingParams(max_tokens=max_tokens)
    detokenizer = IncrementalDetokenizer(StubTokenizer(), tokens, params)
    return Sequence(f"r{next(_ids)}", tokens, params, detokenizer, priority=priority)


def fake_token(seq: Sequence) -> int:
    return (sum(seq.prompt_token_ids) + 31 * seq.num_tokens) % 997


def step(sched: Scheduler) -> ScheduledBatch:
    batch = sched.schedule()
    for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
        seq.num_computed_tokens += n
        sched.block_manager.register_computed(seq)
        if seq.num_computed_tokens == seq.num_tokens:
            seq.append_token(fake_token(seq))
            if len(seq.output_token_ids) >= seq.params.max_tokens:
                sched.finish(seq)
    return batch


def run_all(sched: Scheduler, limit: int = 200) -> list[ScheduledBatch]:
    batches = []
    while sched.has_unfinished():
        batches.append(step(sched))
        assert len(batches) < limit, "the scheduler made no progress"
    return batches


def scheduler(num_blocks=64, budget=16, max_num_seqs=8, **policy) -> Scheduler:
    return Scheduler(
        BlockManager(num_blocks, BS, True), budget, max_num_seqs, PrefillPolicy(**policy)
    )


def entries(batch: ScheduledBatch) -> list[tuple[Sequence, int]]:
    return list(zip(batch.seqs, batch.num_new_tokens, strict=True))


def test_token_budget_is_respected_every_step():
    sched = scheduler(budget=16)
    seqs = [make_seq(n, base=100 * i) for i, n in enumerate([10, 20, 5, 30])]
    for seq in seqs:
        sched.add(seq)
    batches = run_all(sched)
    assert entries(batches[0]) == [(seqs[0], 10), (seqs[1], 6)]
    assert all(1 <= sum(b.num_new_tokens) <= 16 for b in batches)
    # every prompt token and every fed-back output token but the last is computed once
    assert sum(sum(b.num_new_tokens) for b in batches) == sum(n + 3 for n in [10, 20, 5, 30])
    assert all(len(seq.output_token_ids) == 4 for seq in seqs)
    assert sched.block_manager.num_free_blocks == 64


def test_chunked_prefill_splits_a_long_prompt_over_steps():
    sched = scheduler(budget=16)
    seq = make_seq(40, max_tokens=2)
    sched.add(seq)
    computed = []
    for expected in (16, 16, 8):
        assert entries(step(sched)) == [(seq, expected)]
        computed.append(seq.num_computed_tokens)
    assert computed == [16, 32, 40]
    assert len(seq.output_token_ids) == 1  # sampled only when the prompt was complete
    assert entries(step(sched)) == [(seq, 1)]
    assert seq.status is SequenceStatus.FINISHED


def test_running_decodes_come_before_prefills_even_of_higher_priority():
    sched = scheduler(budget=16)
    decoding = make_seq(5, priority=1, max_tokens=10)
    sched.add(decoding)
    step(sched)
    urgent = make_seq(40, priority=0, max_tokens=2, base=500)  # served first, but chunked
    sched.add(urgent)
    assert entries(step(sched)) == [(decoding, 1), (urgent, 15)]
    assert entries(step(sched)) == [(decoding, 1), (urgent, 15)]
    assert entries(step(sched)) == [(decoding, 1), (urgent, 10)]
    batch = step(sched)
    assert sorted(batch.num_new_tokens) == [1, 1]
    assert len(decoding.output_token_ids) == 5  # one token every step


def test_batch_lists_decodes_first():
    sched = scheduler(budget=64)
    early = make_seq(5, max_tokens=5)
    sched.add(early)
    step(sched)
    late = make_seq(9, max_tokens=5, base=50)
    sched.add(late)
    batch = step(sched)
    assert entries(batch) == [(early, 1), (late, 9)]
    assert batch.num_decodes == 1


def test_waiting_requests_are_admitted_by_priority_then_arrival():
    sched = scheduler(budget=64, max_num_seqs=1)
    seqs = [make_seq(6, priority=p, max_tokens=1, base=10 * i) for i, p in enumerate([5, 0, 3, 0])]
    for seq in seqs:
        sched.add(seq)
    order = [batch.seqs[0] for batch in run_all(sched)]
    assert order == [seqs[1], seqs[3], seqs[2], seqs[0]]


def test_max_num_seqs_is_respected():
    sched = scheduler(budget=64, max_num_seqs=2)
    seqs = [make_seq(6, max_tokens=3, base=10 * i) for i in range(5)]
    for seq in seqs:
        sched.add(seq)
    batches = run_all(sched)
    assert max(len(b) for b in batches) == 2
    assert all(len(seq.output_token_ids) == 3 for seq in seqs)


def test_a_higher_priority_takes_a_seat_from_a_lower_one_when_all_are_taken():
    sched = scheduler(budget=64, max_num_seqs=2)
    low = [make_seq(6, priority=1, max_tokens=20, base=10 * i) for i in range(2)]
    for seq in low:
        sched.add(seq)
    step(sched)
    same = make_seq(6, priority=1, max_tokens=2, base=50)
    sched.add(same)
    assert set(step(sched).seqs) == set(low)  # equal priority waits for a seat
    urgent = make_seq(6, priority=0, max_tokens=2, base=70)
    sched.add(urgent)
    batch = step(sched)
    assert urgent in batch.seqs and low[1] not in batch.seqs  # the newest low one gave way
    assert low[1].status is SequenceStatus.WAITING and sched.num_preemptions == 1
    run_all(sched)
    assert low[1].output_token_ids == reference_outputs(6, 10, 20)


def reference_outputs(prompt_len: int, base: int, max_tokens: int) -> list[int]:
    """The same request alone in a large pool: no preemption."""
    sched = scheduler(budget=64)
    seq = make_seq(prompt_len, max_tokens=max_tokens, base=base)
    sched.add(seq)
    run_all(sched)
    return seq.output_token_ids


def test_preemption_picks_the_lowest_priority_and_the_request_later_completes():
    # 6 blocks of 4: three 8-token prompts fill the pool; their first decode needs more.
    sched = scheduler(num_blocks=6, budget=64)
    low = make_seq(8, priority=1, max_tokens=3, base=100)  # oldest, but lowest priority
    high = [make_seq(8, priority=0, max_tokens=2, base=b) for b in (200, 300)]
    for seq in (low, *high):
        sched.add(seq)
    assert sorted(step(sched).num_new_tokens) == [8, 8, 8]
    assert sched.block_manager.num_free_blocks == 0
    batch = step(sched)
    assert entries(batch) == [(high[0], 1), (high[1], 1)]
    assert sched.num_preemptions == 1
    assert low.status is SequenceStatus.WAITING
    assert low in sched.waiting and low not in sched.running
    assert low.block_table == [] and low.num_computed_tokens == 0
    assert len(low.output_token_ids) == 1  # kept: it is recomputed, not restarted
    assert all(seq.status is SequenceStatus.FINISHED for seq in high)
    assert entries(step(sched)) == [(low, 9)]  # prompt and its one output, recomputed
    run_all(sched)
    assert low.status is SequenceStatus.FINISHED
    assert low.output_token_ids == reference_outputs(8, 100, 3)
    assert sched.block_manager.num_free_blocks == 6


def test_preemption_picks_the_newest_among_equal_priorities():
    sched = scheduler(num_blocks=6, budget=64)
    seqs = [make_seq(8, max_tokens=2, base=b) for b in (100, 200, 300)]
    for seq in seqs:
        sched.add(seq)
    step(sched)
    step(sched)
    assert [s.status for s in seqs] == [SequenceStatus.FINISHED] * 2 + [SequenceStatus.WAITING]
    run_all(sched)
    assert seqs[2].output_token_ids == reference_outputs(8, 300, 2)


def test_a_waiting_request_preempts_only_strictly_lower_priorities():
    sched = scheduler(num_blocks=4, budget=64)
    running = make_seq(12, priority=0, max_tokens=50)  # 3 of the 4 blocks
    sched.add(running)
    step(sched)
    same = make_seq(8, priority=0, max_tokens=1, base=100)  # needs 2 blocks: must wait
    sched.add(same)
    assert entries(step(sched)) == [(running, 1)]
    assert sched.num_preemptions == 0 and same.status is SequenceStatus.WAITING

    sched = scheduler(num_blocks=4, budget=64)
    running = make_seq(12, priority=1, max_tokens=50)
    sched.add(running)
    step(sched)
    urgent = make_seq(8, priority=0, max_tokens=1, base=100)
    sched.add(urgent)
    assert entries(step(sched)) == [(urgent, 8)]
    assert sched.num_preemptions == 1 and running.status is SequenceStatus.WAITING


def test_within_a_priority_short_prompts_go_before_long_ones():
    sched = scheduler(budget=16, long_prefill_token_threshold=20, prefill_min_share=0.25)
    long = make_seq(60, max_tokens=1)
    sched.add(long)
    assert entries(step(sched)) == [(long, 16)]
    short = make_seq(10, max_tokens=1, base=500)
    sched.add(short)
    # The long prompt gets its share (a quarter of 16), no more: the step stays short.
    assert dict(entries(step(sched))) == {long: 4, short: 10}
    assert short.status is SequenceStatus.FINISHED
    run_all(sched)
    assert len(long.output_token_ids) == 1


def test_a_higher_priority_prompt_takes_the_budget_from_a_running_prefill_without_preempting():
    sched = scheduler(budget=16, prefill_min_share=0.25)
    book = make_seq(60, priority=10, max_tokens=1)
    sched.add(book)
    step(sched)
    urgent = make_seq(30, priority=0, max_tokens=1, base=500)  # long too, but it outranks
    sched.add(urgent)
    assert dict(entries(step(sched))) == {book: 4, urgent: 12}
    assert sched.num_preemptions == 0 and book.num_computed_tokens == 20


def test_no_minimum_share_lets_a_higher_priority_take_the_whole_step():
    sched = scheduler(budget=16, prefill_min_share=0.0)
    book = make_seq(60, priority=10, max_tokens=1)
    sched.add(book)
    step(sched)
    urgent = make_seq(30, priority=0, max_tokens=1, base=500)
    sched.add(urgent)
    assert entries(step(sched)) == [(urgent, 16)]


def test_at_most_max_num_partial_prefills_prompts_are_mid_prefill():
    sched = scheduler(
        budget=16,
        max_num_partial_prefills=1,
        long_prefill_token_threshold=20,
        prefill_min_share=0.25,
    )
    book = make_seq(60, max_tokens=1)
    sched.add(book)
    step(sched)
    # Short enough to go first, too long to finish in what the book's share leaves.
    chapter = make_seq(18, max_tokens=1, base=300)
    note = make_seq(3, max_tokens=1, base=900)  # fits the step: starts anyway
    sched.add(chapter)
    sched.add(note)
    assert dict(entries(step(sched))) == {book: 4, note: 3}
    assert chapter.status is SequenceStatus.WAITING
    run_all(sched)
    assert len(chapter.output_token_ids) == len(book.output_token_ids) == 1


def test_a_higher_priority_prompt_starts_beyond_the_partial_prefill_limit():
    sched = scheduler(budget=16, max_num_partial_prefills=1, prefill_min_share=0.25)
    book = make_seq(60, priority=10, max_tokens=1)
    sched.add(book)
    step(sched)
    urgent = make_seq(40, priority=0, max_tokens=1, base=500)
    sched.add(urgent)
    assert dict(entries(step(sched))) == {book: 4, urgent: 12}
