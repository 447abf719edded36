"""EngineConfig: every knob of the engine, validated where it is built."""

from dataclasses import dataclass

import torch

from tome.engine.scheduler import PrefillPolicy
from tome.errors import InvalidRequestError
from tome.layers.sparse_prefill import SparsePrefillConfig
from tome.layers.weight_quantization import WEIGHT_QUANTIZATIONS
from tome.models.rope_override import check_rope_override

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# int8 and fp8 store one float32 scale per token and head beside the values.
KV_CACHE_DTYPES = {**DTYPES, "int8": torch.int8, "fp8": torch.float8_e4m3fn}
# Default step budgets, in tokens. A GPU computes 8,192 prompt tokens of a 7B model in well
# under a second; two CPU cores take a second for CPU_STEP_TOKENS of the embedded model
# (BENCHMARKS.md, scheduling), and a request arriving mid-step waits for the step's end.
GPU_STEP_TOKENS = 8192
CPU_STEP_TOKENS = 1024
LONG_PREFILL_FRACTION = 0.04
MIN_LONG_PREFILL_TOKENS = 256


@dataclass
class EngineConfig:
    model: str | None = None  # None: the embedded SmolLM2; else a directory, .gguf or Hub id
    dtype: str = "auto"  # auto: float32 on CPU, the checkpoint's dtype (or bfloat16) on GPU
    device: str = "auto"
    max_model_len: int | None = None  # None: the model's own window
    # Stretch the model's window by a rope scaling, e.g. {"rope_type": "yarn", "factor": 4}.
    rope_scaling: dict | None = None
    # The KV pool: bytes (int), or a fraction in (0, 1] of free memory (float; on a GPU, of
    # what the weights left). None: a default share of free memory.
    kv_cache_memory: int | float | None = None
    kv_cache_dtype: str = "auto"  # auto: the model's dtype (float32 on CPU); or KV_CACHE_DTYPES
    block_size: int = 16
    # The token budget of one step: longer prompts are chunked, and a request that arrives
    # mid-step waits for the step's end. None: 8192 on a GPU, CPU_STEP_TOKENS on the CPU.
    max_num_batched_tokens: int | None = None
    max_num_seqs: int = 64
    # How a step's budget is shared among prompts (scheduler.py). At most this many prompts
    # are mid-prefill at once; a request whose prompt fits the step, or that outranks one of
    # them, starts anyway.
    max_num_partial_prefills: int = PrefillPolicy.max_num_partial_prefills
    # A prompt with more tokens left than this is long: within a priority, shorter ones are
    # served before it. None: 4% of the window (vLLM's default), at least 256.
    long_prefill_token_threshold: int | None = None
    # Every prompt being prefilled gets at least this share of a step's prefill budget,
    # whatever waits ahead of it: no priority starves.
    prefill_min_share: float = PrefillPolicy.prefill_min_share
    enable_prefix_caching: bool = True
    # A hybrid model's prefix-cache hits resume from recurrent states saved at block
    # boundaries (tome/engine/state_checkpoints.py): at most this many are kept, each one
    # sequence's state out of kv_cache_memory. None: as many as max_num_seqs.
    max_state_checkpoints: int | None = None
    # Cached prefix blocks the device pool evicts go down to host memory (bytes; 0: none),
    # and from there to files under disk_kv_cache_dir (bounded by disk_kv_cache_memory
    # bytes, kept across restarts), to be copied back instead of recomputed. See kv_tiers.py.
    host_kv_cache_memory: int = 0
    disk_kv_cache_dir: str | None = None
    disk_kv_cache_memory: int = 16 * 2**30
    # Long prefill chunks attend to a vertical-slash pattern instead of every key (None:
    # dense). Outputs then depend on how a prompt is chunked and cached.
    sparse_prefill: SparsePrefillConfig | None = None
    load_format: str = "auto"  # "dummy": random weights from the config alone
    # GGUF weights in Q4_0, Q4_1, Q4_K or Q8_0: "auto" keeps them in their blocks where the
    # CPU kernel runs them faster than float32 BLAS, "dequantize" expands them at load as
    # transformers does.
    gguf_weights: str = "auto"
    # True: weights in blocks on the CPU (GGUF blocks, `quantization` int4/int8 in
    # float32) multiply activations rounded to 8 bits per 32 values, as llama.cpp does:
    # integer dot products, faster on every x86 CPU, the same bytes on each, and the
    # blocks kept on AVX2 CPUs too. Off by default: the rounding changes answers (the
    # embedded SmolLM2 then names Paris's districts, not Paris, for the capital of France,
    # as llama.cpp does on the same file), and by default outputs equal transformers' over
    # the dequantized weights up to rounding in sums.
    int8_activations: bool = False
    # Quantize float weights as they load (WEIGHT_QUANTIZATIONS: int8, int4 in groups of
    # 32/64/128, fp8 per channel or 128 x 128 blocks, mxfp4); weights a checkpoint or GGUF
    # file already ships quantized stay as they are. Routers stay in float.
    quantization: str | None = None
    # With `quantization`, the embedding and the LM head quantize too (a 49k x 576 head is
    # a fifth of SmolLM2's decode bytes); False keeps them in the model's dtype.
    quantize_head: bool = True
    seed: int = 0
    show_progress: bool = False
    # On CUDA, decode steps replay CUDA graphs captured at start (tome/engine/cuda_graphs.py)
    # unless True: every step then launches its kernels one by one.
    enforce_eager: bool = False

    def __post_init__(self) -> None:
        checks = [
            (
                self.dtype == "auto" or self.dtype in DTYPES,
                f"dtype must be auto or one of {', '.join(DTYPES)}",
            ),
            (self.block_size in (8, 16, 32, 64, 128), "block_size must be 8, 16, 32, 64 or 128"),
            (self.max_model_len is None or self.max_model_len > 0, "max_model_len must be > 0"),
            (
                _is_kv_memory(self.kv_cache_memory),
                "kv_cache_memory must be bytes > 0 (an int) or a fraction in (0, 1] of free memory",
            ),
            (
                self.kv_cache_dtype == "auto" or self.kv_cache_dtype in KV_CACHE_DTYPES,
                f"kv_cache_dtype must be auto or one of {', '.join(KV_CACHE_DTYPES)}",
            ),
            (
                self.max_num_batched_tokens is None
                or (_is_int(self.max_num_batched_tokens) and self.max_num_batched_tokens >= 16),
                "max_num_batched_tokens must be >= 16",
            ),
            (_is_int(self.max_num_seqs) and self.max_num_seqs >= 1, "max_num_seqs must be >= 1"),
            (
                self.max_num_batched_tokens is None
                or self.max_num_batched_tokens >= self.max_num_seqs,
                "max_num_batched_tokens must be >= max_num_seqs, or some decodes would wait",
            ),
            *self._prefill_sharing_checks(),
            (
                self.max_state_checkpoints is None
                or (_is_int(self.max_state_checkpoints) and self.max_state_checkpoints >= 0),
                "max_state_checkpoints must be >= 0",
            ),
            (self.load_format in ("auto", "dummy"), "load_format must be auto or dummy"),
            (
                self.gguf_weights in ("auto", "dequantize"),
                "gguf_weights must be auto or dequantize",
            ),
            (
                self.quantization is None or self.quantization in WEIGHT_QUANTIZATIONS,
                f"quantization must be one of {', '.join(WEIGHT_QUANTIZATIONS)}",
            ),
            *self._kv_tier_checks(),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRequestError(message)
        self.rope_scaling = check_rope_override(self.rope_scaling)
        self.resolved_device()

    def _prefill_sharing_checks(self) -> list[tuple[bool, str]]:
        threshold = self.long_prefill_token_threshold
        share = self.prefill_min_share
        return [
            (
                _is_int(self.max_num_partial_prefills) and self.max_num_partial_prefills >= 1,
                "max_num_partial_prefills must be >= 1",
            ),
            (
                threshold is None or (_is_int(threshold) and threshold >= 1),
                "long_prefill_token_threshold must be >= 1",
            ),
            (
                isinstance(share, int | float) and not isinstance(share, bool) and 0 <= share <= 1,
                "prefill_min_share must be in [0, 1]",
            ),
        ]

    def step_token_budget(self) -> int:
        """max_num_batched_tokens, or its default for the device."""
        if self.max_num_batched_tokens is not None:
            return self.max_num_batched_tokens
        budget = GPU_STEP_TOKENS if self.resolved_device().type == "cuda" else CPU_STEP_TOKENS
        return max(budget, self.max_num_seqs)

    def state_checkpoint_slots(self) -> int:
        """Checkpoint slots of a hybrid model's state pool: none without prefix caching."""
        if not self.enable_prefix_caching:
            return 0
        if self.max_state_checkpoints is None:
            return self.max_num_seqs
        return self.max_state_checkpoints

    def prefill_policy(self, max_model_len: int) -> PrefillPolicy:
        threshold = self.long_prefill_token_threshold
        if threshold is None:
            threshold = max(MIN_LONG_PREFILL_TOKENS, int(max_model_len * LONG_PREFILL_FRACTION))
        return PrefillPolicy(self.max_num_partial_prefills, threshold, self.prefill_min_share)

    def _kv_tier_checks(self) -> list[tuple[bool, str]]:
        return [
            (
                _is_int(self.host_kv_cache_memory) and self.host_kv_cache_memory >= 0,
                "host_kv_cache_memory must be bytes >= 0 (an int)",
            ),
            (
                _is_int(self.disk_kv_cache_memory) and self.disk_kv_cache_memory > 0,
                "disk_kv_cache_memory must be bytes > 0 (an int)",
            ),
            (
                self.disk_kv_cache_dir is None
                or (isinstance(self.disk_kv_cache_dir, str) and self.disk_kv_cache_dir.strip()),
                "disk_kv_cache_dir must be a directory path",
            ),
            (
                self.disk_kv_cache_dir is None or self.host_kv_cache_memory,
                "disk_kv_cache_dir needs host_kv_cache_memory > 0: blocks reach the disk "
                "through host memory",
            ),
            (
                not self.host_kv_cache_memory or self.enable_prefix_caching,
                "host_kv_cache_memory needs enable_prefix_caching: only cached prefix blocks "
                "move between tiers",
            ),
        ]

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise InvalidRequestError(f"unknown device {self.device!r}") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidRequestError("device cuda was asked for but no GPU is available")
        return device


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_kv_memory(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > 0
    return isinstance(value, float) and 0 < value <= 1
