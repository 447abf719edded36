"""From an EngineConfig to a model with weights in place, its tokenizer and its config."""

import ctypes
import ctypes.util
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from rich.progress import Progress

from tome.engine.config import DTYPES, EngineConfig
from tome.kernels import cpu_layer_ops
from tome.kernels.block_quantized_matmul import runs_fast
from tome.layers.bfloat16_linear import use_bfloat16_kernel
from tome.layers.block_quantized_linear import set_int8_activations
from tome.layers.transposed_linear import transpose_layer_linears
from tome.layers.weight_quantization import WEIGHT_QUANTIZATIONS
from tome.loader import Tokenizer, dummy_weights, iter_weights, load_hf_config, resolve_model
from tome.loader.gguf_weights import gguf_file_type
from tome.loader.model_source import ModelSource
from tome.loader.quantized_checkpoint import quant_method
from tome.models.config import ModelConfig
from tome.models.quantize_on_load import quantize_on_load
from tome.models.registry import model_class
from tome.models.rope_override import apply_rope_override

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Tokenizer
    config: ModelConfig
    source: ModelSource
    dtype: torch.dtype
    keeps_blocks: bool  # GGUF weights computed from their quantized blocks
    quantization: str | None  # EngineConfig.quantization: float weights quantized at load

    @property
    def numerics(self) -> str:
        """What, besides the checkpoint, decides the values the model computes."""
        weights = "gguf blocks" if self.keeps_blocks else "float weights"
        quantized = f"|quantized to {self.quantization}" if self.quantization else ""
        return f"{self.dtype}|{weights}{quantized}"

    @property
    def weight_quantization(self) -> str | None:
        """How the weights are quantized, for clients: a pre-quantized checkpoint's
        quant_method ("awq", "gptq", "compressed-tensors", "fp8"), else the scheme applied
        at load ("int8", ...), or a GGUF file's type ("gguf Q4_1"), else None."""
        if self.source.kind == "gguf":
            file_type = gguf_file_type(self.source.path)
            gguf = f"gguf {file_type}" if file_type else None
            return ", ".join(part for part in (gguf, self.quantization) if part) or None
        return quant_method(self.config.hf_config) or self.quantization


def choose_dtype(requested: str, hf_config, device: torch.device) -> torch.dtype:
    if requested != "auto":
        return DTYPES[requested]
    if device.type == "cpu":
        return torch.float32
    stored = getattr(hf_config, "torch_dtype", None) or getattr(hf_config, "dtype", None)
    return stored if stored in (torch.bfloat16, torch.float16) else torch.bfloat16


def load_model(config: EngineConfig) -> LoadedModel:
    source = resolve_model(config.model)
    hf_config = load_hf_config(source)
    apply_rope_override(hf_config, config.rope_scaling)
    model_config = ModelConfig.from_hf(hf_config)
    device = config.resolved_device()
    dtype = choose_dtype(config.dtype, hf_config, device)
    tokenizer = Tokenizer.from_source(source)
    # Built without memory; load_weights allocates each float parameter on `device` as its
    # tensor arrives, so layers that stay in GGUF blocks never take their float size.
    with torch.device("meta"):
        model = model_class(model_config)(model_config).to(dtype)
    keeps_blocks = _keeps_blocks(config, source, device, dtype)
    if config.load_format == "dummy":
        weights = dummy_weights(model_config, model.checkpoint_shapes(), seed=config.seed)
    else:
        weights = iter_weights(source, model_config, keeps_blocks)
    if config.quantization is not None:
        scheme = WEIGHT_QUANTIZATIONS[config.quantization]
        weights = quantize_on_load(model, weights, scheme, config.quantize_head)
    model.load_weights(
        _with_progress(weights, len(model.checkpoint_shapes()), config.show_progress), device
    )
    set_int8_activations(model, config.int8_activations)
    if device.type == "cpu" and dtype == torch.float32:  # bf16 matmuls go faster unchanged
        transpose_layer_linears(model)
        cpu_layer_ops.kernel_library()  # compiled now, if ever, not in the first request
    if device.type == "cpu" and dtype == torch.bfloat16:
        use_bfloat16_kernel(model)
    model.eval()
    if device.type == "cpu":
        release_freed_memory()
    logger.info("loaded %s (%s, %s) on %s", source.name, model_config.architecture, dtype, device)
    return LoadedModel(
        model, tokenizer, model_config, source, dtype, keeps_blocks, config.quantization
    )


def release_freed_memory() -> None:
    """Hand the loader's freed scratch back to the OS. Loading in blocks unpacks and packs
    thousands of expert tensors of a few MB; glibc keeps what they leave freed in its heap
    (2 GB for a 4-layer Qwen3-30B-A3B Q4_K_M, more than the model's 2.1 GB) unless asked."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _keeps_blocks(
    config: EngineConfig, source: ModelSource, device: torch.device, dtype: torch.dtype
) -> bool:
    return (
        config.gguf_weights == "auto"
        and config.load_format != "dummy"
        and source.kind == "gguf"
        and device.type == "cpu"
        and dtype == torch.float32
        and runs_fast(config.int8_activations)
    )


def _with_progress(
    weights: Iterable[tuple[str, torch.Tensor]], total: int, show: bool
) -> Iterator[tuple[str, torch.Tensor]]:
    if not show:
        yield from weights
        return
    with Progress(transient=True) as progress:
        task = progress.add_task("Loading weights", total=total)
        for item in weights:
            yield item
            progress.advance(task)
