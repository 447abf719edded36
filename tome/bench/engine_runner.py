"""Our side: the Engine, stepped by hand so that prefill and decode are timed apart.

Prefix caching is off, so every prompt token is computed, and the step budget holds a
whole decode batch of prompts: each prompt is prefilled in one step, as transformers does,
and a batch's sequences all start decoding together; unless a prefill chunk is set, when
long prompts are prefilled that many tokens a step. The KV pool: engine_pool.py."""

import itertools
import time

from tome import LLM, SamplingParams
from tome.bench.engine_pool import BLOCK_SIZE, PoolPlan, plan_pool
from tome.bench.measure import measure
from tome.bench.results import RowKey, SideResult
from tome.bench.spec import ModelSpec
from tome.bench.workloads import Workload
from tome.engine.engine import Engine


def run_engine(model: ModelSpec, workload: Workload) -> SideResult:
    step_tokens = _step_budget(model, workload)
    pool = plan_pool(model, workload, step_tokens)
    llm = LLM(
        model=str(model.source.path),
        dtype=model.dtype,
        device=model.device,
        kv_cache_dtype=model.kv_cache_dtype,
        quantization=model.quantization,
        quantize_head=model.quantize_head,
        int8_activations=model.int8_activations,
        rope_scaling=model.rope_scaling,
        sparse_prefill=model.sparse_prefill,
        load_format="dummy" if model.dummy else "auto",
        gguf_weights=model.gguf_weights,
        kv_cache_memory=pool.bytes,
        block_size=BLOCK_SIZE,
        max_num_batched_tokens=step_tokens,
        max_num_seqs=workload.max_batch,
        enable_prefix_caching=False,
        seed=workload.seed,
    )
    return measure("tome", _EngineBench(llm.engine, pool), workload)


def _step_budget(model: ModelSpec, workload: Workload) -> int:
    """Tokens a step may hold: a whole prompt, or a whole decode batch of prompts, unless a
    prefill chunk is set (long prompts' activations would not fit otherwise)."""
    if model.prefill_chunk is not None:
        return max(model.prefill_chunk, workload.max_batch)
    decode_prompts = workload.max_batch * max(workload.decode_prompt_lens)
    return max(*workload.prefill_lengths, decode_prompts)


class _EngineBench:
    def __init__(self, engine: Engine, pool: PoolPlan) -> None:
        self.engine = engine
        self.pool = pool
        self._ids = itertools.count()

    def has_room(self, key: RowKey) -> bool:
        return self.pool.holds(key)

    def prefill_tps(self, prompt: list[int]) -> float:
        """Prompt tokens / time from add_request to the first token (max_tokens=1)."""
        start = time.perf_counter()
        self._add(prompt, max_tokens=1)
        while self.engine.has_unfinished():
            self.engine.step()
        return len(prompt) / (time.perf_counter() - start)

    def decode_tps(self, prompts: list[list[int]], max_tokens: int) -> float:
        """Tokens generated after every sequence has its first one / the time they took."""
        pending = {self._add(prompt, max_tokens) for prompt in prompts}
        while pending:  # the prefill step(s), not timed
            pending -= {out.request_id for out in self.engine.step() if out.token_ids}
        start = time.perf_counter()
        generated = 0
        while self.engine.has_unfinished():
            generated += sum(len(out.delta_token_ids) for out in self.engine.step())
        return generated / (time.perf_counter() - start)

    def _add(self, prompt: list[int], max_tokens: int) -> str:
        request_id = f"bench-{next(self._ids)}"
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        self.engine.add_request(request_id, prompt, params)
        return request_id
