"""AttentionMetadata: what every attention layer needs to know about one flattened batch.

The batch holds the decode sequences first (one query token each), then the prefill
chunks. Tensors live on the model's device; the `_cpu` lists repeat a few of them so the
CPU backend can slice without device syncs."""

from dataclasses import dataclass
from functools import cached_property

import torch

from tome.layers.layer_state import StateCheckpoint
from tome.layers.sparse_prefill import SparsePrefillConfig


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [tokens] flat KV slot each new token is written to
    block_tables: torch.Tensor  # [seqs, max_blocks] KV block ids, padded with 0
    context_lens: torch.Tensor  # [seqs] KV length of each sequence after this step
    query_start_loc: torch.Tensor  # [seqs + 1] cumulative query lengths
    # [tokens] the sequence length each token is rotated for, as transformers' generate
    # does: the whole prompt's length for prompt tokens, position + 1 for later ones. Read
    # by the rope types whose frequencies depend on it (dynamic, longrope).
    rope_seq_lens: torch.Tensor
    num_decodes: int  # the first num_decodes sequences have exactly one query token
    query_start_loc_cpu: list[int]
    context_lens_cpu: list[int]
    block_tables_cpu: torch.Tensor  # block_tables on the host, for context_runs_cpu
    block_size: int
    # Long prefill chunks attend sparsely when set (EngineConfig.sparse_prefill).
    sparse_prefill: SparsePrefillConfig | None = None
    # [seqs] each sequence's slot in the recurrent-state pool (layer_state.py), on the
    # device and on the host; None for models without recurrent layers.
    state_slots: torch.Tensor | None = None
    state_slots_cpu: list[int] | None = None
    # [seqs] where each sequence's state is also saved as a prefix-cache checkpoint this
    # step (None: nowhere); None when no sequence's is.
    state_checkpoints_cpu: list[StateCheckpoint | None] | None = None

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens_cpu)

    def starts_sequence(self, seq: int) -> bool:
        """Whether sequence `seq`'s tokens in this batch are its first: a recurrent layer
        then starts from zeros instead of reading the sequence's state slot."""
        start, end = self.query_start_loc_cpu[seq], self.query_start_loc_cpu[seq + 1]
        return self.context_lens_cpu[seq] == end - start

    def state_checkpoint(self, seq: int) -> StateCheckpoint | None:
        """Where sequence `seq`'s state is saved as a checkpoint this step, if anywhere."""
        return self.state_checkpoints_cpu[seq] if self.state_checkpoints_cpu else None

    def attends_sparsely(self, seq: int) -> bool:
        """Whether sequence `seq`'s prefill chunk takes sparse attention: on, and its
        context long enough."""
        config = self.sparse_prefill
        return config is not None and self.context_lens_cpu[seq] >= config.min_context

    @cached_property
    def context_runs_cpu(self) -> list[list[tuple[int, int]]]:
        """Per sequence, its context as stretches of consecutive blocks, each (first slot,
        tokens), so the CPU backend reads them as views of the pool instead of gathering a
        copy. Made on first use: the Triton backend never needs them."""
        return context_runs(
            self.block_tables_cpu, self.context_lens_cpu, self.block_size, self.num_decodes
        )


def context_runs(
    tables: torch.Tensor, context_lens: list[int], block_size: int, num_decodes: int = 0
) -> list[list[tuple[int, int]]]:
    """Each sequence's first context_lens[i] tokens as (first slot, tokens) of each stretch
    of consecutive block ids in its row of `tables`. A prefill chunk's stretches follow its
    context's order (its causal mask depends on it); a decode's (the first num_decodes rows)
    follow block ids, since one query attends to its whole context in any order: a
    sequence that took a freed region's blocks tail first (descending ids) is still one
    stretch. Vectorised over the blocks: a 1M-token context has 65k of them."""
    runs = []
    for row, length in enumerate(context_lens):
        blocks = tables[row, : -(-length // block_size)]
        if row < num_decodes:
            blocks, order = blocks.sort()
            last = (order == len(order) - 1).nonzero().item()  # the part-filled block
        else:
            last = len(blocks) - 1
        runs.append(_stretches(blocks, last, length, block_size))
    return runs


def _stretches(
    blocks: torch.Tensor, last: int, length: int, block_size: int
) -> list[tuple[int, int]]:
    """Stretches of consecutive ids in `blocks`, where blocks[last] holds the context's
    last, possibly partial, block: a stretch ends after it, as its slots run out there."""
    breaks = blocks[1:] != blocks[:-1] + 1
    if last < len(blocks) - 1:
        breaks[last] = True
    after = (breaks.nonzero().flatten() + 1).tolist()
    starts, ends = [0, *after], [*after, len(blocks)]
    missing = len(blocks) * block_size - length  # unfilled slots of the last block
    firsts = blocks[starts].tolist()
    return [
        (block * block_size, (end - start) * block_size - (missing if start <= last < end else 0))
        for block, start, end in zip(firsts, starts, ends, strict=True)
    ]
