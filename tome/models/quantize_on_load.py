"""`quantization=...`: a model's float checkpoint tensors quantized as they stream in, one
at a time, so the model never holds their float copy. The quantized weights then take the
path GGUF blocks take (BlockShards): a fused projection is put together from its quantized
shards and computed by the layer quantized_linear chooses for the machine."""

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from tome.layers.moe import FusedExperts
from tome.layers.weight_quantization import WeightQuantization

# Routers pick experts by comparing scores: quantizing them would change which experts run
# (vLLM keeps them in float too). They are small.
ROUTERS = frozenset({"gate", "shared_expert_gate"})
HEAD_MODULES = frozenset({"lm_head", "model.embed_tokens"})


def quantize_on_load(
    model: nn.Module,
    weights: Iterable[tuple[str, Any]],
    quantization: WeightQuantization,
    quantize_head: bool,
) -> Iterator[tuple[str, Any]]:
    """The checkpoint's (name, tensor) pairs with every float weight of a linear layer, a
    layer of experts and (with quantize_head) the embedding and head quantized, the last
    two in the scheme's `for_head`."""
    for name, tensor in weights:
        scheme = None
        if isinstance(tensor, torch.Tensor):
            scheme = load_scheme(model, name, tuple(tensor.shape), quantization, quantize_head)
        yield name, tensor if scheme is None else scheme.quantize(tensor)


def load_scheme(
    model: nn.Module,
    name: str,
    shape: tuple[int, ...],
    quantization: WeightQuantization,
    quantize_head: bool,
) -> WeightQuantization | None:
    """The scheme checkpoint tensor `name` of `shape` is quantized in as it loads (the
    embedding's and head's `for_head`), None where it stays float: not a quantized
    module's weight, not a matrix, or inputs not a multiple of the scheme's."""
    if len(shape) != 2 or not _quantizes(model, name, quantize_head):
        return None
    scheme = quantization.for_head if _is_head(model, name) else quantization
    return scheme if shape[1] % scheme.input_multiple == 0 else None


def _is_head(model: nn.Module, name: str) -> bool:
    return model._target(name)[0].rsplit(".", 1)[0] in HEAD_MODULES


def _quantizes(model: nn.Module, name: str, quantize_head: bool) -> bool:
    target, _ = model._target(name)
    module_name, attribute = target.rsplit(".", 1)
    try:
        module = model.get_submodule(module_name)
    except AttributeError:  # a tensor the model skips, such as DeepSeek-V3's MTP layer
        return False
    if module_name in HEAD_MODULES:
        return quantize_head and attribute == "weight"
    if isinstance(module, FusedExperts):
        return True
    is_router = module_name.rsplit(".", 1)[-1] in ROUTERS
    return isinstance(module, nn.Linear) and attribute == "weight" and not is_router
