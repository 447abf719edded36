"""Decode steps replayed from CUDA graphs captured at fixed batch sizes.

At decode a step's kernels are tiny: a Llama-8B step at batch 1 launches some thousand of
them, and launching costs more than their work. A CUDA graph records one forward pass's
launches once and replays them in one call. It replays exactly what it recorded: the same
kernels, grids and buffers. So every input lives in a static buffer the graph reads,
copied in before each replay; a batch is padded up to the nearest captured size (padding
rows write no KV: their slot is -1, which the store kernel skips); and the attention's
host-side sizes are fixed at capture, its partitions cut for CAPTURE_CONTEXT tokens.
Contexts longer than that, prefill chunks and backends that read host-side metadata (the
CPU ones) run eagerly, as vLLM does past its max_seq_len_to_capture.

The capture itself is a function argument: capture_cuda_graph on a GPU; the tests pass
one that replays by running the forward again, which checks everything here but the
recording on a machine without CUDA."""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tome.layers.attention_metadata import AttentionMetadata

# Longest context a captured graph attends over: 4x vLLM's max_seq_len_to_capture, to hold
# 32k-token decodes. Its cost is partial results of empty partitions: at batch 256 with
# 32 heads of 128, 268 MB of buffers; at batch 1, a few hundred programs that exit at once.
CAPTURE_CONTEXT = 32768
# Batch sizes captured (those up to max_num_seqs): small ones one by one, then steps of 8.
CAPTURE_BATCH_SIZES = (1, 2, 4, *range(8, 257, 8))

Forward = Callable[[], torch.Tensor]
# Records `forward` (its memory from the shared pool) and returns what replays it, giving
# the tensor the recorded pass wrote.
Capture = Callable[[Forward, object], Forward]


def capture_cuda_graph(forward: Forward, pool: object) -> Forward:
    """One warm-up pass (Triton compiles its kernels there: a capture cannot), then the
    recorded one."""
    forward()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        output = forward()

    def replay() -> torch.Tensor:
        graph.replay()
        return output

    return replay


def new_graph_pool(device: torch.device) -> object:
    return torch.cuda.graph_pool_handle() if device.type == "cuda" else None


@dataclass
class _StaticInputs:
    """The buffers every graph reads, sized for the largest batch; a graph of batch size b
    reads their first b rows."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    query_start_loc: torch.Tensor
    rope_seq_lens: torch.Tensor

    @classmethod
    def allocate(cls, batch: int, max_blocks: int, device: torch.device) -> "_StaticInputs":
        def longs(*shape: int, fill: int = 0) -> torch.Tensor:
            return torch.full(shape, fill, dtype=torch.long, device=device)

        return cls(
            input_ids=longs(batch),
            positions=longs(batch),
            slot_mapping=longs(batch, fill=-1),
            block_tables=longs(batch, max_blocks),
            context_lens=longs(batch, fill=1),
            query_start_loc=torch.arange(batch + 1, device=device),
            rope_seq_lens=longs(batch, fill=1),
        )


class DecodeGraphs:
    def __init__(
        self,
        model: torch.nn.Module,
        block_size: int,
        max_num_seqs: int,
        max_model_len: int,
        device: torch.device,
        capture: Capture = capture_cuda_graph,
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.longest = min(max_model_len, CAPTURE_CONTEXT)
        self.max_blocks = -(-self.longest // block_size)
        top = min(max_num_seqs, CAPTURE_BATCH_SIZES[-1])
        self.sizes = [b for b in CAPTURE_BATCH_SIZES if b < top] + [top]
        self.inputs = _StaticInputs.allocate(self.sizes[-1], self.max_blocks, device)
        pool = new_graph_pool(device)
        # Largest first: the smaller graphs' memory then fits in what the largest freed.
        self.replays = {size: capture(self._forward(size), pool) for size in reversed(self.sizes)}

    def serves(self, meta: AttentionMetadata) -> bool:
        """Whether a captured graph runs this step: decodes only, a batch no larger than the
        largest captured, contexts no longer than CAPTURE_CONTEXT."""
        n = meta.num_seqs
        return (
            meta.num_decodes == n
            and n <= self.sizes[-1]
            and max(meta.context_lens_cpu) <= self.longest
            and meta.block_tables.shape[1] <= self.max_blocks
        )

    def run(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """The hidden states [n, hidden] of a step `serves` accepted."""
        n = meta.num_seqs
        size = next(b for b in self.sizes if b >= n)
        s = self.inputs
        s.input_ids[:n].copy_(input_ids)
        s.positions[:n].copy_(positions)
        s.slot_mapping[:n].copy_(meta.slot_mapping)
        s.block_tables[:n, : meta.block_tables.shape[1]].copy_(meta.block_tables)
        s.context_lens[:n].copy_(meta.context_lens)
        s.rope_seq_lens[:n].copy_(meta.rope_seq_lens)
        if n < size:  # rows a larger step left: padding again, writing nothing
            s.slot_mapping[n:size].fill_(-1)
            s.context_lens[n:size].fill_(1)
        return self.replays[size]()[:n]

    def _forward(self, size: int) -> Forward:
        s = self.inputs
        meta = AttentionMetadata(
            slot_mapping=s.slot_mapping[:size],
            block_tables=s.block_tables[:size],
            context_lens=s.context_lens[:size],
            query_start_loc=s.query_start_loc[: size + 1],
            rope_seq_lens=s.rope_seq_lens[:size],
            num_decodes=size,
            query_start_loc_cpu=list(range(size + 1)),
            # What sizes the attention's partitions; the true lengths are on the device.
            context_lens_cpu=[self.longest] * size,
            block_tables_cpu=torch.zeros(size, self.max_blocks, dtype=torch.long),
            block_size=self.block_size,
        )
        return lambda: self.model(s.input_ids[:size], s.positions[:size], meta)
