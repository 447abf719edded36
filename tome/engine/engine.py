"""Engine: the synchronous core. Requests go in with add_request; each step() runs one
scheduled batch and returns what changed for each request touched."""

import logging
from collections.abc import Sequence as Seq
from dataclasses import replace

from tome.engine.block_manager import BlockManager
from tome.engine.config import EngineConfig
from tome.engine.context_cache import ContextCache, check_context_request
from tome.engine.detokenizer import IncrementalDetokenizer
from tome.engine.host_allocator import keep_freed_memory
from tome.engine.kv_cache import (
    kv_budget,
    kv_bytes_per_token,
    kv_cache_dtype,
    resolve_kv_cache_dtype,
)
from tome.engine.kv_tiers import KVTierStats, build_kv_tiers
from tome.engine.memory_plan import state_pool_plan
from tome.engine.model_loading import load_model
from tome.engine.model_runner import ModelRunner, StepOutput
from tome.engine.outputs import RequestOutput
from tome.engine.sampler import SampledToken
from tome.engine.sampling_params import SamplingParams
from tome.engine.scheduler import ScheduledBatch, Scheduler
from tome.engine.sequence import Sequence
from tome.engine.state_pool import StatePool, state_bytes_per_sequence
from tome.errors import InvalidRequestError, KVCacheCapacityError, PromptTooLongError

logger = logging.getLogger(__name__)


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        device = config.resolved_device()
        if device.type == "cpu":
            keep_freed_memory()
        loaded = load_model(config)
        self.tokenizer = loaded.tokenizer
        self.model_config = loaded.config
        self.dtype = loaded.dtype
        self.weight_quantization = loaded.weight_quantization
        self.kv_dtype = resolve_kv_cache_dtype(config.kv_cache_dtype, self.dtype, device)
        self.max_model_len = self._max_model_len()
        token_bytes = kv_bytes_per_token(self.model_config, self.kv_dtype)  # scales included
        block_bytes = token_bytes * config.block_size
        # A hybrid model's recurrent state, one slot per seat and one per prefix-cache
        # checkpoint, comes out of the same budget.
        state = state_pool_plan(state_bytes_per_sequence(loaded.model, self.dtype), config)
        state_bytes = state.total_bytes
        budget = kv_budget(
            config.kv_cache_memory,
            device,
            config.max_num_seqs * self.max_model_len * token_bytes + state_bytes,
        )
        num_blocks = (budget - state_bytes) // block_bytes
        if num_blocks < 1:
            raise InvalidRequestError(_no_block_message(budget, block_bytes, state_bytes, config))
        self.state_pool = StatePool(
            loaded.model, config.max_num_seqs, self.dtype, device, state.checkpoints
        )
        self.block_manager = BlockManager(
            num_blocks, config.block_size, config.enable_prefix_caching
        )
        if self.state_pool.has_state:  # hits end where a state to resume from is saved
            self.block_manager.state_checkpoints = self.state_pool.checkpoints
        self.scheduler = Scheduler(
            self.block_manager,
            config.step_token_budget(),
            config.max_num_seqs,
            config.prefill_policy(self.max_model_len),
            self.state_pool,
        )
        self.runner = ModelRunner(
            loaded.model,
            config.block_size,
            num_blocks,
            self.kv_dtype,
            device,
            kv_read_dtype=kv_cache_dtype(self.dtype, device),
            sparse_prefill=config.sparse_prefill,
            state_pool=self.state_pool,
        )
        if device.type == "cuda" and not config.enforce_eager:
            self.runner.capture_decode_graphs(config.max_num_seqs, self.max_model_len)
        self.kv_tiers = build_kv_tiers(
            config, self.runner.kv_pool, loaded.source, loaded.numerics, self.state_pool
        )
        self.block_manager.lower_tiers = self.kv_tiers
        if self.kv_tiers is not None:  # checkpoints go down with their blocks
            self.block_manager.lower_states = self.kv_tiers.states
        self.requests: dict[str, Sequence] = {}
        self.contexts = ContextCache(self.block_manager)
        logger.info(
            "KV pool: %d tokens, %d bytes (%.1f MiB) of %s in %d blocks of %d tokens; "
            "max_model_len %d",
            self.kv_capacity_tokens,
            num_blocks * self.runner.kv_pool.bytes_per_block,
            num_blocks * self.runner.kv_pool.bytes_per_block / 2**20,
            str(self.kv_dtype).removeprefix("torch."),
            num_blocks,
            config.block_size,
            self.max_model_len,
        )
        if self.state_pool.has_state:
            logger.info(
                "recurrent state: %d bytes a sequence, %d slots and %d checkpoints (%.1f MiB)",
                state.bytes_per_sequence,
                state.seats,
                state.checkpoints,
                state.total_bytes / 2**20,
            )

    @property
    def kv_capacity_tokens(self) -> int:
        return self.block_manager.num_blocks * self.block_manager.block_size

    def _max_model_len(self) -> int:
        window = self.model_config.max_position_embeddings
        sliding = self.model_config.sliding_window
        if sliding is not None and sliding < window:
            # Attention here is full; within the sliding window that is the same thing.
            logger.warning(
                "sliding-window attention is not implemented: window capped at %d", sliding
            )
            window = sliding
        if self.config.max_model_len is None:
            return window
        if self.config.max_model_len > window:
            raise InvalidRequestError(
                f"max_model_len={self.config.max_model_len} exceeds the model's window of {window} "
                "tokens; extend it with a rope scaling override"
            )
        return self.config.max_model_len

    def tokenize_prompt(self, prompt: str | Seq[int], add_special_tokens: bool = True) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        elif not isinstance(prompt, Seq):
            raise InvalidRequestError("a prompt is a string or a list of token ids")
        else:
            ids = list(prompt)
            vocab = self.model_config.vocab_size
            if not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
                raise InvalidRequestError(f"prompt token ids must be integers in [0, {vocab})")
        if not ids:
            raise InvalidRequestError("the prompt is empty")
        return ids

    def add_request(
        self,
        request_id: str,
        prompt: str | Seq[int],
        params: SamplingParams,
        priority: int = 0,
        context: str | None = None,
    ) -> None:
        """Validate and queue a request; a bad one raises a typed error and changes nothing.
        With `context`, the prompt continues that cached context's tokens."""
        if context is None:
            ids = self.tokenize_prompt(prompt)
        else:
            own = self.tokenize_prompt(prompt, add_special_tokens=False)
            ids = self.contexts.token_ids(context) + own
        self._queue(Sequence(request_id, ids, params, self._detokenizer(ids, params), priority))

    def cache_context(
        self, request_id: str, name: str, prompt: str | Seq[int], ttl_seconds: float
    ) -> None:
        """Queue the prefill of a named context; when it finishes, its blocks stay pinned
        (see ContextCache) and the request ends with finish_reason "stop", no tokens."""
        check_context_request(name, ttl_seconds)
        if name in self.contexts or any(s.context_name == name for s in self.requests.values()):
            raise InvalidRequestError(
                f"a context named {name!r} exists already; delete or refresh it"
            )
        ids = self.tokenize_prompt(prompt)
        params = SamplingParams(max_tokens=1)
        seq = Sequence(request_id, ids, params, self._detokenizer(ids, params))
        seq.context_name, seq.context_ttl = name, ttl_seconds
        self._queue(seq)

    def _detokenizer(self, ids: list[int], params: SamplingParams) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.tokenizer.hf, ids, params)

    def _queue(self, seq: Sequence) -> None:
        if seq.request_id in self.requests:
            raise InvalidRequestError(f"request id {seq.request_id!r} is already in use")
        seq.kv_namespace = self.runner.model.kv_namespace(len(seq.prompt_token_ids))
        seq.kv_token_limit = self._kv_tokens_for(seq)
        self.requests[seq.request_id] = seq
        self.scheduler.add(seq)

    def _kv_tokens_for(self, seq: Sequence) -> int:
        """The KV tokens a sequence may fill: the pool less the blocks pinned by cached
        contexts, except those it shares. Raises when the prompt cannot fit."""
        num_tokens = len(seq.prompt_token_ids)
        if num_tokens >= self.max_model_len:
            raise PromptTooLongError(
                f"the prompt has {num_tokens} tokens; the window is {self.max_model_len} "
                "and at least one must be left for the answer"
            )
        unshared = self.contexts.num_pinned_blocks - self.contexts.shared_blocks(seq)
        pinned = unshared * self.block_manager.block_size
        limit = self.kv_capacity_tokens - pinned
        if num_tokens + 1 > limit:
            held = f" ({pinned} held by cached contexts)" if pinned else ""
            raise KVCacheCapacityError(
                f"the prompt has {num_tokens} tokens but the KV pool holds only "
                f"{limit}{held}; raise kv_cache_memory"
            )
        return limit

    def abort(self, request_id: str) -> RequestOutput | None:
        seq = self.requests.pop(request_id, None)
        if seq is None:
            return None
        self.scheduler.finish(seq)
        seq.finish_reason = "abort"
        return self._output(seq, "", [])

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        self.contexts.expire()
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return self._fail_unschedulable()
        batch = self._move_kv_blocks(batch)
        if not batch.seqs:  # all sent back to waiting by failed restores; they run next step
            return []
        batch.state_checkpoints = self.state_pool.plan_checkpoints(
            batch.seqs,
            batch.num_new_tokens,
            self.block_manager.block_size,
            self.block_manager.block_hash,
        )
        step = self.runner.execute(batch)
        self.state_pool.keep_checkpoints()
        return self._postprocess(batch, step)

    def _move_kv_blocks(self, batch: ScheduledBatch) -> ScheduledBatch:
        """Before the forward pass: save evicted cached blocks to the lower KV tiers and
        restore the ones this step's prefixes found there, a hybrid model's state
        checkpoints with them. Sequences whose restore failed go back to waiting, to
        compute those tokens instead. (Copies recorded in a step with nothing to run wait
        for the next: nothing overwrites or reads them before.)"""
        swaps = self.block_manager.take_swaps()
        swaps.state_ins = self.state_pool.take_restores()
        if self.kv_tiers is None or not swaps:
            return batch
        lost_blocks = self.kv_tiers.apply(swaps, self.runner.kv_pool)
        lost_states: set[int] = set()
        if swaps.state_outs or swaps.state_ins:
            lost_states = self.kv_tiers.move_states(swaps, self.state_pool)
        if not (lost_blocks or lost_states):
            return batch
        return self.scheduler.recompute_lost(batch, lost_blocks, lost_states)

    def kv_tier_stats(self) -> KVTierStats:
        """Prefix-cache hits per tier and bytes moved between tiers, since start."""
        stats = replace(self.kv_tiers.stats) if self.kv_tiers is not None else KVTierStats()
        stats.device_hit_tokens = self.block_manager.device_hit_tokens
        return stats

    def _postprocess(self, batch: ScheduledBatch, step: StepOutput) -> list[RequestOutput]:
        outputs = []
        entries = zip(
            batch.seqs, batch.num_new_tokens, step.sampled, step.prompt_logprobs, strict=True
        )
        for seq, n, token, scored in entries:
            if scored:
                seq.prompt_logprobs.extend(scored)
            seq.num_computed_tokens += n
            self.block_manager.register_computed(seq)
            if token is None:
                continue
            if seq.context_name is not None:
                outputs.append(self._pin(seq))
                continue
            delta = self._append(seq, token)
            if seq.finish_reason is not None:
                delta += seq.detokenizer.flush()
                self.scheduler.finish(seq)
                self.requests.pop(seq.request_id, None)
            outputs.append(self._output(seq, delta, [token.token_id]))
        return outputs

    def _pin(self, seq: Sequence) -> RequestOutput:
        """A context's prefill is done: hand its blocks to the context cache."""
        self.scheduler.detach(seq)
        self.requests.pop(seq.request_id, None)
        self.contexts.pin(seq, seq.context_ttl)
        seq.finish_reason = "stop"
        return self._output(seq, "", [])

    def _fail_unschedulable(self) -> list[RequestOutput]:
        """Nothing could run although requests wait: the first waiting one cannot get
        blocks (contexts pinned after it was queued took them). End it, not the loop."""
        if self.scheduler.running or not self.scheduler.waiting:
            return []
        seq = self.scheduler.waiting[0]
        self.scheduler.finish(seq)
        self.requests.pop(seq.request_id, None)
        seq.finish_reason = "length" if seq.output_token_ids else "error"
        out = self._output(seq, seq.detokenizer.flush(), [])
        out.error = "the KV pool has no room left for this request beside the cached contexts"
        return [out]

    def _append(self, seq: Sequence, token: SampledToken) -> str:
        """Add the sampled token, decide whether the request is done, return new text."""
        seq.append_token(token.token_id)
        if seq.logprobs is not None:
            seq.logprobs.append(token.logprob)
        params = seq.params
        is_eos = not params.ignore_eos and token.token_id in self.tokenizer.eos_token_ids
        if is_eos or token.token_id in params.stop_token_ids:
            seq.finish_reason = "stop"
            return ""
        delta = seq.detokenizer.push(token.token_id)
        if seq.detokenizer.stopped_by_string:
            seq.finish_reason = "stop"
        elif len(seq.output_token_ids) >= params.max_tokens or seq.num_tokens >= min(
            self.max_model_len, seq.kv_token_limit
        ):
            # The pool bounds a sequence too: one that filled it alone could never be
            # given another block and would wait forever.
            seq.finish_reason = "length"
        return delta

    def _output(self, seq: Sequence, delta: str, delta_ids: list[int]) -> RequestOutput:
        return RequestOutput(
            request_id=seq.request_id,
            prompt_token_ids=seq.prompt_token_ids,
            token_ids=list(seq.output_token_ids),
            text=seq.detokenizer.text,
            delta_text=delta,
            delta_token_ids=delta_ids,
            finish_reason=seq.finish_reason,
            num_cached_tokens=seq.num_cached_tokens or 0,
            logprobs=list(seq.logprobs) if seq.logprobs is not None else None,
            # Not copied: complete before the first token is sampled, never changed after.
            prompt_logprobs=seq.prompt_logprobs,
            queue_seconds=seq.queue_seconds,
        )


def _no_block_message(budget: int, block_bytes: int, state_bytes: int, config: EngineConfig) -> str:
    if not state_bytes:
        return f"kv_cache_memory={budget} bytes holds no block of {block_bytes} bytes"
    return (
        f"kv_cache_memory={budget} bytes holds the recurrent state of max_num_seqs="
        f"{config.max_num_seqs} sequences and its checkpoints ({state_bytes} bytes) and no "
        f"KV block of {block_bytes} bytes beside it; raise kv_cache_memory or lower "
        "max_num_seqs or max_state_checkpoints"
    )
