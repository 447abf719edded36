"""One entry point for model weights, whatever file format they come in."""

from collections.abc import Iterator

import torch

from tome.kernels.block_quantized_matmul import BlockQuantizedWeight
from tome.loader.gguf_weights import iter_gguf_weights
from tome.loader.model_source import ModelSource
from tome.loader.quantized_checkpoint import checkpoint_format, decode_quantized
from tome.loader.safetensors_weights import iter_safetensors_weights, safetensors_tensor_names
from tome.models.config import ModelConfig


def iter_weights(
    source: ModelSource, config: ModelConfig, keep_blocks: bool = False
) -> Iterator[tuple[str, torch.Tensor | BlockQuantizedWeight]]:
    """(HF parameter name, tensor) pairs, one tensor in memory at a time.

    Safetensors keep their stored dtype, but a pre-quantized checkpoint's layers come
    decoded (quantized_checkpoint.py); GGUF tensors are dequantized to float32, or with
    `keep_blocks` the types the CPU kernel reads stay in their blocks. The model casts and
    fuses as it copies them in. Files are checked before this returns."""
    if source.kind == "gguf":
        weights = iter_gguf_weights(source.path, config, keep_blocks)
    else:
        weights = iter_safetensors_weights(source.path)
        checkpoint = checkpoint_format(config.hf_config)
        if checkpoint is not None:
            names = safetensors_tensor_names(source.path)
            weights = decode_quantized(weights, names, checkpoint)
    return ((name, tensor) for name, tensor in weights if _needed(name, config))


def _needed(name: str, config: ModelConfig) -> bool:
    # Old checkpoints store rotary inv_freq buffers; our rotary layer computes its own.
    if name.endswith("rotary_emb.inv_freq"):
        return False
    # A tied head is the embedding; a stored copy would only be loaded twice.
    return not (config.tie_word_embeddings and name == "lm_head.weight")
