"""Engine: the synchronous core. Requests go in with add_request; each step() runs one
scheduled batch and returns what changed for each request touched."""

import logging
from collections.abc import Sequence as Seq

from tome.engine.block_manager import BlockManager
from tome.engine.config import EngineConfig
from tome.engine.detokenizer import IncrementalDetokenizer
from tome.engine.kv_cache import default_kv_budget, kv_bytes_per_token, kv_cache_dtype
from tome.engine.model_loading import load_model
from tome.engine.model_runner import ModelRunner
from tome.engine.outputs import RequestOutput
from tome.engine.sampler import SampledToken
from tome.engine.sampling_params import SamplingParams
from tome.engine.scheduler import ScheduledBatch, Scheduler
from tome.engine.sequence import Sequence
from tome.errors import InvalidRequestError, KVCacheCapacityError, PromptTooLongError

logger = logging.getLogger(__name__)


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        loaded = load_model(config)
        self.tokenizer = loaded.tokenizer
        self.model_config = loaded.config
        self.dtype = loaded.dtype
        device = config.resolved_device()
        self.kv_dtype = kv_cache_dtype(self.dtype, device)
        self.max_model_len = self._max_model_len()
        token_bytes = kv_bytes_per_token(self.model_config, self.kv_dtype)
        block_bytes = token_bytes * config.block_size
        budget = config.kv_cache_memory or default_kv_budget(
            device, config.max_num_seqs * self.max_model_len * token_bytes
        )
        num_blocks = budget // block_bytes
        if num_blocks < 1:
            raise InvalidRequestError(
                f"kv_cache_memory={budget} bytes holds no block of {block_bytes} bytes"
            )
        self.block_manager = BlockManager(
            num_blocks, config.block_size, config.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            self.block_manager, config.max_num_batched_tokens, config.max_num_seqs
        )
        self.runner = ModelRunner(
            loaded.model, config.block_size, num_blocks, self.kv_dtype, device
        )
        self.requests: dict[str, Sequence] = {}
        logger.info(
            "KV pool: %d blocks of %d tokens (%d tokens, %.1f MiB); max_model_len %d",
            num_blocks,
            config.block_size,
            self.kv_capacity_tokens,
            num_blocks * block_bytes / 2**20,
            self.max_model_len,
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

    def tokenize_prompt(self, prompt: str | Seq[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
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
        self, request_id: str, prompt: str | Seq[int], params: SamplingParams, priority: int = 0
    ) -> None:
        """Validate and queue a request; a bad one raises a typed error and changes nothing."""
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        ids = self.tokenize_prompt(prompt)
        self._check_fits(len(ids))
        detokenizer = IncrementalDetokenizer(self.tokenizer.hf, ids, params)
        seq = Sequence(request_id, ids, params, detokenizer, priority=priority)
        self.requests[request_id] = seq
        self.scheduler.add(seq)

    def _check_fits(self, num_tokens: int) -> None:
        if num_tokens >= self.max_model_len:
            raise PromptTooLongError(
                f"the prompt has {num_tokens} tokens; the window is {self.max_model_len} "
                "and at least one must be left for the answer"
            )
        if num_tokens + 1 > self.kv_capacity_tokens:
            raise KVCacheCapacityError(
                f"the prompt has {num_tokens} tokens but the KV pool holds only "
                f"{self.kv_capacity_tokens}; raise kv_cache_memory"
            )

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
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return []
        sampled = self.runner.execute(batch)
        return self._postprocess(batch, sampled)

    def _postprocess(
        self, batch: ScheduledBatch, sampled: list[SampledToken | None]
    ) -> list[RequestOutput]:
        outputs = []
        for seq, n, token in zip(batch.seqs, batch.num_new_tokens, sampled, strict=True):
            seq.num_computed_tokens += n
            self.block_manager.register_computed(seq)
            if token is None:
                continue
            delta = self._append(seq, token)
            if seq.finish_reason is not None:
                delta += seq.detokenizer.flush()
                self.scheduler.finish(seq)
                self.requests.pop(seq.request_id, None)
            outputs.append(self._output(seq, delta, [token.token_id]))
        return outputs

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
            self.max_model_len, self.kv_capacity_tokens
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
        )
