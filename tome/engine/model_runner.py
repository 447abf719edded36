"""ModelRunner: owns the model and its KV pool (and binds the recurrent state pool of a
hybrid model); turns a scheduled batch into one flattened forward pass and samples the
positions that need a next token."""

import logging
from dataclasses import dataclass

import torch

from tome.engine.cuda_graphs import Capture, DecodeGraphs, capture_cuda_graph
from tome.engine.kv_cache import KVPool
from tome.engine.outputs import TokenLogprob
from tome.engine.prompt_logprobs import prompt_logprobs
from tome.engine.sampler import SampledToken, sample
from tome.engine.scheduler import ScheduledBatch
from tome.engine.sequence import Sequence
from tome.engine.state_pool import StatePool
from tome.layers.attention import Attention
from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.sparse_prefill import SparsePrefillConfig
from tome.models.llama_cpu_decode import cpu_decode_layers

logger = logging.getLogger(__name__)


@dataclass
class StepOutput:
    """One step's results, one entry per sequence of the batch."""

    sampled: list[SampledToken | None]  # None for a prefill chunk that is not the last
    prompt_logprobs: list[list[TokenLogprob] | None]  # newly scored prompt tokens, if asked


class ModelRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        block_size: int,
        num_blocks: int,
        kv_dtype: torch.dtype,
        device: torch.device,
        kv_read_dtype: torch.dtype | None = None,  # what a quantized cache is read back as
        sparse_prefill: SparsePrefillConfig | None = None,
        state_pool: StatePool | None = None,  # a hybrid model's recurrent state, bound
    ) -> None:
        self.model = model
        self.state_pool = state_pool
        self.block_size = block_size
        self.sparse_prefill = sparse_prefill
        self.device = device
        self.kv_pool = KVPool(model.config, num_blocks, block_size, kv_dtype, device, kv_read_dtype)
        self.layers = [m for m in model.modules() if isinstance(m, Attention)]
        for layer, kv_cache in zip(self.layers, self.kv_pool.layers, strict=True):
            layer.bind_cache(kv_cache)
        self.decode_graphs: DecodeGraphs | None = None
        # On the CPU, decode steps of a plain Llama-family model in one C++ call.
        self.cpu_decode = cpu_decode_layers(model) if device.type == "cpu" else None

    @property
    def has_recurrent_state(self) -> bool:
        return self.state_pool is not None and self.state_pool.has_state

    def capture_decode_graphs(
        self, max_num_seqs: int, max_model_len: int, capture: Capture = capture_cuda_graph
    ) -> None:
        """Record decode steps as CUDA graphs (cuda_graphs.py), where the attention backend
        allows it; a capture that fails leaves every step eager, with a warning."""
        unsafe = {
            type(layer.backend).__name__ for layer in self.layers if not layer.backend.graph_safe
        }
        if self.has_recurrent_state:
            unsafe.add("the recurrent state layers")  # they index their state from the host
        if unsafe:
            logger.info("decode runs eagerly: %s reads host metadata", ", ".join(sorted(unsafe)))
            return
        try:
            self.decode_graphs = DecodeGraphs(
                self.model, self.block_size, max_num_seqs, max_model_len, self.device, capture
            )
        except Exception as exc:  # whatever stops a capture, eager decoding still serves
            logger.warning("CUDA graph capture failed, decode runs eagerly: %s", exc)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> StepOutput:
        """Run one step. Samples a token for each sequence whose chunk reached the end of its
        known tokens, and scores the prompt tokens of chunks that asked for prompt logprobs."""
        input_ids, positions, meta, sample_rows = self._prepare(batch)
        if self.decode_graphs is not None and self.decode_graphs.serves(meta):
            hidden = self.decode_graphs.run(input_ids, positions, meta)
        elif self.cpu_decode is not None and self.cpu_decode.serves(meta):
            hidden = self.cpu_decode.run(input_ids, positions, meta)
        else:
            hidden = self.model(input_ids, positions, meta)
        results: list[SampledToken | None] = [None] * len(batch)
        if sample_rows:
            ends = torch.tensor([meta.query_start_loc_cpu[i + 1] - 1 for i in sample_rows])
            logits = self.model.compute_logits(hidden[ends.to(self.device)])
            sampled = sample(logits, [batch.seqs[i] for i in sample_rows])
            for i, token in zip(sample_rows, sampled, strict=True):
                results[i] = token
        scored = [
            self._score_prompt(seq, n, hidden[meta.query_start_loc_cpu[i] :])
            for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True))
        ]
        return StepOutput(results, scored)

    def _score_prompt(
        self, seq: Sequence, num_new: int, hidden: torch.Tensor
    ) -> list[TokenLogprob] | None:
        """Prompt logprobs from this chunk's hidden states (`hidden` starts at the chunk):
        the state at position p scores prompt token p + 1. Positions scored before a
        preemption are not scored again."""
        if not seq.needs_prompt_logprobs:
            return None
        start = seq.num_computed_tokens
        first = max(start, len(seq.prompt_logprobs) - 1)
        end = min(start + num_new, len(seq.prompt_token_ids) - 1)
        if first >= end:
            return None
        return prompt_logprobs(
            self.model.compute_logits,
            hidden[first - start : end - start],
            seq.prompt_token_ids[first + 1 : end + 1],
            seq.params.prompt_logprobs,
        )

    def _prepare(self, batch: ScheduledBatch):
        ids: list[int] = []
        positions: list[int] = []
        query_start_loc = [0]
        context_lens: list[int] = []
        sample_rows: list[int] = []
        for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
            start = seq.num_computed_tokens
            ids.extend(seq.token_ids[start : start + n])
            positions.extend(range(start, start + n))
            query_start_loc.append(query_start_loc[-1] + n)
            context_lens.append(start + n)
            if start + n == seq.num_tokens:
                sample_rows.append(i)
        longest_table = max(len(seq.block_table) for seq in batch.seqs)
        tables = torch.zeros(len(batch), longest_table, dtype=torch.long)
        for i, seq in enumerate(batch.seqs):
            tables[i, : len(seq.block_table)] = torch.tensor(seq.block_table)
        position_tensor = torch.tensor(positions, dtype=torch.long)
        seq_of_token = torch.repeat_interleave(
            torch.arange(len(batch)), torch.tensor(batch.num_new_tokens)
        )
        blocks = tables[seq_of_token, position_tensor // self.block_size]
        slot_mapping = blocks * self.block_size + position_tensor % self.block_size
        prompt_lens = torch.tensor([len(seq.prompt_token_ids) for seq in batch.seqs])
        rope_seq_lens = torch.maximum(prompt_lens[seq_of_token], position_tensor + 1)
        meta = AttentionMetadata(
            slot_mapping=slot_mapping.to(self.device),
            block_tables=tables.to(self.device),
            context_lens=torch.tensor(context_lens).to(self.device),
            query_start_loc=torch.tensor(query_start_loc).to(self.device),
            rope_seq_lens=rope_seq_lens.to(self.device),
            num_decodes=batch.num_decodes,
            query_start_loc_cpu=query_start_loc,
            context_lens_cpu=context_lens,
            block_tables_cpu=tables,
            block_size=self.block_size,
            sparse_prefill=self.sparse_prefill,
        )
        if self.has_recurrent_state:
            meta.state_slots_cpu = [seq.state_slot for seq in batch.seqs]
            meta.state_slots = torch.tensor(meta.state_slots_cpu).to(self.device)
            meta.state_checkpoints_cpu = batch.state_checkpoints or None
        input_tensor = torch.tensor(ids, dtype=torch.long).to(self.device)
        return input_tensor, position_tensor.to(self.device), meta, sample_rows
