"""The memory plan: what a model's weights and KV cache need, from its config alone.

`tome plan` prints it; nothing here loads weights. Weight bytes are what the loaded layers
keep (loaded_weight_bytes: quantized at load, the layout the device computes from) and KV
bytes per token the pool's own (kv_bytes_per_token, scales of int8/fp8 included), so the
plan and the engine agree. A pre-quantized checkpoint is counted as if in float. A hybrid
model's recurrent state (state_pool.py) is counted as the engine allocates it, one slot
per seat (max_num_seqs) and one per prefix-cache checkpoint (state_checkpoint_slots), out
of the same memory as the KV cache; one sequence's state does not grow with its length,
so beside its KV it is shown at SEQUENCE_TOKENS."""

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tome.engine.config import DTYPES, KV_CACHE_DTYPES, EngineConfig
from tome.engine.kv_cache import free_memory, kv_bytes_per_token
from tome.engine.state_pool import state_bytes_per_sequence
from tome.errors import InvalidRequestError, ModelLoadError
from tome.layers.weight_quantization import WEIGHT_QUANTIZATIONS
from tome.loader import load_hf_config, resolve_model
from tome.loader.model_source import ModelSource
from tome.models.config import ModelConfig
from tome.models.registry import model_class
from tome.models.weight_bytes import loaded_weight_bytes

# KV dtypes the plan compares, after the weights' own dtype.
PLANNED_KV_DTYPES = ("bfloat16", "float16", "int8", "fp8")
# Context lengths at which one sequence's recurrent state is shown beside its KV.
SEQUENCE_TOKENS = (128 * 1024, 1024 * 1024)


@dataclass(frozen=True)
class KVPlan:
    kv_dtype: str
    bytes_per_token: int
    kv_bytes: int  # for max_model_len tokens
    fits: bool  # weights + state + kv_bytes within the device memory
    max_tokens: int  # the most tokens whose KV fits beside the weights and state


@dataclass(frozen=True)
class StatePlan:
    """A hybrid model's recurrent state as the engine's StatePool holds it."""

    bytes_per_sequence: int  # 0 without recurrent layers
    seats: int  # slots of running sequences: max_num_seqs
    checkpoints: int  # prefix-cache checkpoint slots: EngineConfig.state_checkpoint_slots()

    @property
    def total_bytes(self) -> int:
        return (self.seats + self.checkpoints) * self.bytes_per_sequence


@dataclass(frozen=True)
class MemoryPlan:
    parameters: int
    dtype: str
    quantization: str | None  # EngineConfig.quantization
    weight_bytes: int
    state: StatePlan
    max_model_len: int
    model_window: int
    device_memory: int
    kv: list[KVPlan]  # the weights' dtype first

    @property
    def state_bytes(self) -> int:
        """The whole state pool, counted beside the weights before the KV cache."""
        return self.state.total_bytes


def parameter_count(config: ModelConfig) -> int:
    """Parameters of the checkpoint, every expert of a MoE model included: the model
    built on the meta device counts its own tensors (a tied head once)."""
    return checkpoint_parameters(meta_model(config))


def meta_model(config: ModelConfig) -> nn.Module:
    """The model built on the meta device: its shapes, without memory."""
    with torch.device("meta"):
        return model_class(config)(config)


def checkpoint_parameters(model: nn.Module) -> int:
    """Parameters of the tensors a checkpoint holds for `model` (built anywhere, meta too)."""
    return sum(math.prod(shape) for shape in model.checkpoint_shapes().values())


def weight_bytes(
    config: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    quantization: str | None = None,
    quantize_head: bool = True,
) -> int:
    """Bytes the weights keep once loaded in `dtype` on `device`, quantized at load as
    EngineConfig's `quantization` and `quantize_head` say."""
    scheme = None if quantization is None else WEIGHT_QUANTIZATIONS[quantization]
    sizes = loaded_weight_bytes(meta_model(config), dtype, device, scheme, quantize_head)
    return sum(sizes.values())


def plan_memory(
    config: ModelConfig,
    dtype: str,
    max_model_len: int,
    device_memory: int,
    quantization: str | None = None,
    quantize_head: bool = True,
    engine: EngineConfig | None = None,
) -> MemoryPlan:
    """Weights in `dtype` (quantized at load by `quantization`, in the layout of
    plan_device), a hybrid model's state pool as an engine with the settings `engine`
    (default: EngineConfig's) sizes it, plus the KV cache of `max_model_len` tokens, for
    the weights' dtype and each of PLANNED_KV_DTYPES, against `device_memory` bytes."""
    if dtype not in DTYPES:
        raise InvalidRequestError(f"dtype must be one of {', '.join(DTYPES)}")
    if quantization is not None and quantization not in WEIGHT_QUANTIZATIONS:
        raise InvalidRequestError(f"quantization must be one of {', '.join(WEIGHT_QUANTIZATIONS)}")
    if max_model_len < 1:
        raise InvalidRequestError("max_model_len must be > 0")
    if device_memory < 1:
        raise InvalidRequestError("device memory must be > 0 bytes")
    weights = weight_bytes(config, DTYPES[dtype], plan_device(), quantization, quantize_head)
    state = state_plan(config, DTYPES[dtype], engine or EngineConfig())
    room = device_memory - weights - state.total_bytes
    kv_names = [dtype, *(name for name in PLANNED_KV_DTYPES if name != dtype)]
    return MemoryPlan(
        parameters=parameter_count(config),
        dtype=dtype,
        quantization=quantization,
        weight_bytes=weights,
        state=state,
        max_model_len=max_model_len,
        model_window=config.max_position_embeddings,
        device_memory=device_memory,
        kv=[_kv_plan(config, name, max_model_len, room) for name in kv_names],
    )


def state_plan(config: ModelConfig, dtype: torch.dtype, engine: EngineConfig) -> StatePlan:
    """The state pool Engine allocates for `config` in `dtype` with the settings `engine`:
    nothing for a model without recurrent layers, as there."""
    return state_pool_plan(state_bytes_per_sequence(meta_model(config), dtype), engine)


def state_pool_plan(bytes_per_sequence: int, engine: EngineConfig) -> StatePlan:
    """The state pool of sequences of `bytes_per_sequence` with the settings `engine`: a
    slot per seat and per checkpoint; none at all without recurrent state."""
    if not bytes_per_sequence:
        return StatePlan(0, 0, 0)
    return StatePlan(bytes_per_sequence, engine.max_num_seqs, engine.state_checkpoint_slots())


def _kv_plan(config: ModelConfig, name: str, tokens: int, room: int) -> KVPlan:
    per_token = kv_bytes_per_token(config, KV_CACHE_DTYPES[name])
    kv_bytes = per_token * tokens
    return KVPlan(name, per_token, kv_bytes, kv_bytes <= room, max(room, 0) // per_token)


def plan_device() -> torch.device:
    """The device the plan is for: the GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_device_memory() -> int:
    """What this machine has free: the GPU's memory when there is one, else available RAM."""
    return free_memory(plan_device())


def load_plan_config(model: str | None, dummy: str | None) -> ModelConfig:
    """The config of MODEL (as `tome run` resolves it) or of a bare config.json (`dummy`,
    the file or its folder), without weights or tokenizer."""
    if dummy is None:
        return ModelConfig.from_hf(load_hf_config(resolve_model(model)))
    if model is not None:
        raise InvalidRequestError("give a model or --dummy CONFIG, not both")
    path = Path(dummy).expanduser()
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise ModelLoadError(f"{dummy}: no such config file (give a config.json or its folder)")
    with tempfile.TemporaryDirectory() as folder:
        # Any file name will do: the loader reads config.json from a folder.
        shutil.copyfile(config_file, Path(folder) / "config.json")
        return ModelConfig.from_hf(load_hf_config(ModelSource("hf_dir", Path(folder))))
