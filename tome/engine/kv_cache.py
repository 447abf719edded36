"""The paged KV pool: one K and one V tensor per layer (and their scales when quantized),
sized from a memory budget."""

import psutil
import torch
import torch.nn.functional as F

from tome.engine.config import KV_CACHE_DTYPES
from tome.errors import InvalidRequestError
from tome.kernels.host_pages import zeroed_host_buffer
from tome.layers.kv_quantization import SCALE_DTYPE, is_quantized, scale_bytes_per_token_head
from tome.layers.layer_kv_cache import LayerKVCache
from tome.layers.torch_attention_backend import gather_kv, read_kv, write_kv
from tome.models.config import ModelConfig

DEFAULT_CPU_SHARE = 0.25  # of available RAM, when no kv_cache_memory is given
DEFAULT_GPU_SHARE = 0.90  # of free GPU memory after the weights


def kv_bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
    """K and V (or a latent cache's one vector) of every layer that has them for one token,
    with the scales of a quantized dtype."""
    per_head = config.cache_head_dim * dtype.itemsize + scale_bytes_per_token_head(dtype)
    per_layer = config.cache_tensors_per_layer * config.cache_kv_heads * per_head
    return config.num_cache_layers * per_layer


def kv_cache_dtype(model_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """On CPU the KV cache and attention stay in float32: without native bfloat16 units,
    bfloat16 attention runs several times slower there than float32."""
    return torch.float32 if device.type == "cpu" else model_dtype


def resolve_kv_cache_dtype(
    name: str, model_dtype: torch.dtype, device: torch.device
) -> torch.dtype:
    """The dtype the pool stores K/V in for an EngineConfig.kv_cache_dtype name; refuses
    one this device's torch cannot write, read and attend over."""
    if name == "auto":
        return kv_cache_dtype(model_dtype, device)
    dtype = KV_CACHE_DTYPES[name]
    try:
        _try_attention(dtype, kv_cache_dtype(model_dtype, device), device)
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        raise InvalidRequestError(
            f"kv_cache_dtype {name} is not supported on {device.type} by torch {torch.__version__}"
        ) from exc
    return dtype


def _try_attention(dtype: torch.dtype, read_dtype: torch.dtype, device: torch.device) -> None:
    """Write a token into a one-block cache of `dtype`, read it back, attend over it."""
    cache = _layer_cache((1, 1, 1, 8), dtype, read_dtype, device)
    new = torch.ones(1, 1, 8, device=device)
    write_kv(cache, new, new, torch.zeros(1, dtype=torch.long, device=device))
    tables = torch.zeros(1, 1, dtype=torch.long, device=device)
    keys, values = read_kv(cache, lambda t: gather_kv(t, tables, 1))
    F.scaled_dot_product_attention(keys, keys, values)


def kv_budget(requested: int | float | None, device: torch.device, most_useful: int) -> int:
    """Bytes for the pool. An int is bytes, taken as given. A float is a share of free
    memory, None the default share; a share never exceeds `most_useful` bytes (every
    sequence at the full window): more could never be used."""
    if isinstance(requested, int):
        return requested
    if requested is None:
        requested = DEFAULT_GPU_SHARE if device.type == "cuda" else DEFAULT_CPU_SHARE
    return min(int(free_memory(device) * requested), most_useful)


def free_memory(device: torch.device) -> int:
    """Bytes free on the device now: GPU memory for cuda, available RAM for the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    return psutil.virtual_memory().available


class KVPool:
    """Every layer's paged K/V. Blocks are the unit: each tensor of each layer has the
    block as its leading dimension, so copying a block means copying that row of each."""

    def __init__(
        self,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        read_dtype: torch.dtype | None = None,
    ) -> None:
        """`dtype` is what K/V are stored as; a quantized one (int8, fp8) is read back as
        `read_dtype` (default float32)."""
        shape = (num_blocks, block_size, config.cache_kv_heads, config.cache_head_dim)
        self.num_blocks = num_blocks
        shared = config.cache_tensors_per_layer == 1
        self.layers = [
            _layer_cache(shape, dtype, read_dtype or torch.float32, device, shared)
            for _ in range(config.num_cache_layers)
        ]

    def tensors(self) -> list[torch.Tensor]:
        return [t for layer in self.layers for t in layer.tensors()]

    @property
    def bytes_per_block(self) -> int:
        return sum(t[0].numel() * t.element_size() for t in self.tensors())


def _layer_cache(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    read_dtype: torch.dtype,
    device: torch.device,
    shared: bool = False,
) -> LayerKVCache:
    """K and V tensors, or one that is both when `shared` (a latent cache)."""
    k = _zeros(shape, dtype, device)
    v = k if shared else _zeros(shape, dtype, device)
    if not is_quantized(dtype):
        return LayerKVCache(k, v)
    # Scales lead with the block too, so blocks still move by copying rows.
    k_scale = _zeros(shape[:-1], SCALE_DTYPE, device)
    v_scale = k_scale if shared else _zeros(shape[:-1], SCALE_DTYPE, device)
    return LayerKVCache(k, v, k_scale, v_scale, read_dtype)


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    # Untouched zero pages from the OS (host_pages.py says why not torch.zeros or malloc).
    # Zeros, not garbage, because padded decode reads unwritten slots under a mask, and a
    # NaN there would survive the mask (0 * NaN).
    nbytes = torch.Size(shape).numel() * torch.tensor([], dtype=dtype).element_size()
    return zeroed_host_buffer(nbytes).view(dtype).view(shape)
