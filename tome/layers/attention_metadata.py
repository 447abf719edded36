"""AttentionMetadata: what every attention layer needs to know about one flattened batch.

The batch holds the decode sequences first (one query token each), then the prefill
chunks. Tensors live on the model's device; the `_cpu` lists repeat a few of them so the
CPU backend can slice without device syncs."""

from dataclasses import dataclass

import torch

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
    # Per sequence: its context as stretches of consecutive blocks, each (first slot,
    # tokens), so the CPU backend reads them as views of the pool instead of gathering a
    # copy. One stretch is the usual case for a prompt; a decoding sequence gains one each
    # time the block after its last was taken by another sequence.
    context_runs_cpu: list[list[tuple[int, int]]]
    # Long prefill chunks attend sparsely when set (EngineConfig.sparse_prefill).
    sparse_prefill: SparsePrefillConfig | None = None

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens_cpu)
