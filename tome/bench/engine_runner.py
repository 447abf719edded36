"""Our side: the Engine, stepped by hand so that prefill and decode are timed apart.

Prefix caching is off, so every prompt token is computed, and the step budget holds a
whole decode batch of prompts: each prompt is prefilled in one step, as transformers does,
and a batch's sequences all start decoding together."""

import itertools
import time

from tome import LLM, SamplingParams
from tome.bench.measure import measure
from tome.bench.results import SideResult
from tome.bench.spec import ModelSpec
from tome.bench.workloads import Workload
from tome.engine.engine import Engine
from tome.engine.kv_cache import kv_bytes_per_token, resolve_kv_cache_dtype
from tome.loader import load_hf_config
from tome.models.config import ModelConfig

BLOCK_SIZE = 16


def run_engine(model: ModelSpec, workload: Workload) -> SideResult:
    llm = LLM(
        model=str(model.source.path),
        dtype=model.dtype,
        device=model.device,
        kv_cache_dtype=model.kv_cache_dtype,
        rope_scaling=model.rope_scaling,
        sparse_prefill=model.sparse_prefill,
        load_format="dummy" if model.dummy else "auto",
        kv_cache_memory=_kv_budget(model, workload),
        block_size=BLOCK_SIZE,
        max_num_batched_tokens=max(
            *workload.prefill_lengths, workload.max_batch * workload.decode_prompt_len
        ),
        max_num_seqs=workload.max_batch,
        enable_prefix_caching=False,
        seed=workload.seed,
    )
    return measure("tome", _EngineBench(llm.engine), workload)


def _kv_budget(model: ModelSpec, workload: Workload) -> int:
    """Bytes for exactly the blocks the workload needs. The default pool is a share of free
    memory (allocated up front on a GPU), which would swamp the memory column next to
    transformers' cache, which grows only as far as the workload needs."""
    config = ModelConfig.from_hf(load_hf_config(model.source))
    kv_dtype = resolve_kv_cache_dtype(model.kv_cache_dtype, model.torch_dtype, model.torch_device)
    per_token = kv_bytes_per_token(config, kv_dtype)
    longest_prefill = _blocks(max(workload.prefill_lengths) + 1)
    decode = workload.max_batch * _blocks(workload.decode_prompt_len + workload.decode_tokens)
    return max(longest_prefill, decode) * BLOCK_SIZE * per_token


def _blocks(tokens: int) -> int:
    return -(-tokens // BLOCK_SIZE)


class _EngineBench:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ids = itertools.count()

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
