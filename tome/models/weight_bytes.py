"""The bytes a model's weights keep once loaded, counted on the model built on the meta
device: a float tensor at its dtype's size; a weight `quantization=` quantizes at load (the
rules of quantize_on_load: which modules, the head's scheme, the input multiple) at the
size of what the layer block_shards installs for the dtype and device keeps, as
quantized_linear chooses it:
- on the block kernel (CPU, float32, AVX-512): codes packed in panels of 16 output rows
  (two 4-bit codes a byte), float32 scales (and int4's offsets) per 32 inputs;
- on the CPU in bfloat16 or float16: torch's int4 pack (two codes a byte, scale and zero
  per 32 in the dtype) or int8 pack (a scale per row in the dtype); an mxfp4 weight, whose
  scales vary along a row, is held as for other devices;
- elsewhere (CUDA, a CPU without the kernel), and for the embedding off the kernel: one
  code a byte with float32 scales (and offsets) per 32;
- fp8: one e4m3 byte a weight, a float32 scale per row (or per row and 128 columns).
Experts are counted a layer per expert and projection, as quantized_linear builds them.
The memory plan, the bench roofline and its pool size count with `loaded_weight_bytes`."""

from collections import defaultdict

import torch
from torch import nn

from tome.kernels.block_quantized_matmul import BLOCK, PANEL
from tome.layers.moe import FusedExperts
from tome.layers.quantized_linear import HALF_DTYPES, uses_block_kernel
from tome.layers.weight_quantization import FP8_BLOCK, WeightQuantization
from tome.models.quantize_on_load import load_scheme

FLOAT32_BYTES = torch.float32.itemsize
EMBEDDING = "model.embed_tokens.weight"


def loaded_weight_bytes(
    model: nn.Module,
    dtype: torch.dtype,
    device: torch.device,
    quantization: WeightQuantization | None = None,
    quantize_head: bool = True,
) -> dict[str, int]:
    """Bytes each of `model`'s parameters (by name; a fused one, a tied head, once) keeps
    once loaded in `dtype` on `device`, quantized at load by `quantization` if given. A
    tied head that becomes a layer of its own (torch's int8 pack over the embedding's
    codes) adds its own scales under "lm_head.weight"."""
    # Parameter -> (rows, inputs, scheme) of each checkpoint tensor, by shard.
    shards: dict[str, dict[int, tuple[int, int, WeightQuantization | None]]] = defaultdict(dict)
    for name, shape in model.checkpoint_shapes().items():
        target, shard = model._target(name)
        scheme = None
        if quantization is not None:
            scheme = load_scheme(model, name, shape, quantization, quantize_head)
        shards[target][shard] = (shape[0], shape[-1], scheme)
    parameters = dict(model.named_parameters())
    sizes = {}
    for target, parts in shards.items():
        module = model.get_submodule(target.rsplit(".", 1)[0])
        schemes = {scheme for _, _, scheme in parts.values()}
        scheme = schemes.pop()
        if scheme is None or schemes:  # a layer not wholly quantized is expanded to float
            sizes[target] = parameters[target].numel() * dtype.itemsize
        elif isinstance(module, nn.Embedding):
            rows, inputs, _ = parts[0]
            sizes[target] = _kept_bytes(scheme, rows, inputs, dtype, device, embedding=True)
        else:
            sizes[target] = sum(
                _kept_bytes(scheme, rows, inputs, dtype, device)
                for rows, inputs in _layers(module, target, parts)
            )
    if getattr(model.config, "tie_word_embeddings", False):
        rows, inputs, scheme = shards[EMBEDDING][0]
        if scheme is not None and _int8_packed(scheme, dtype, device):
            sizes["lm_head.weight"] = rows * dtype.itemsize
    return sizes


def _layers(
    module: nn.Module, target: str, parts: dict[int, tuple[int, int, object]]
) -> list[tuple[int, int]]:
    """(rows, inputs) of each quantized layer the shards of `target` make: one stacked
    layer for a Linear's shards; per expert for a layer of experts (its gate_up_proj's
    shards 2e and 2e + 1 stacked, its down_proj's shard e alone)."""
    if not isinstance(module, FusedExperts):
        return [(sum(rows for rows, _, _ in parts.values()), parts[0][1])]
    if target.endswith(".gate_up_proj"):
        return [
            (parts[2 * e][0] + parts[2 * e + 1][0], parts[2 * e][1]) for e in range(len(parts) // 2)
        ]
    return [(rows, inputs) for rows, inputs, _ in (parts[e] for e in sorted(parts))]


def _kept_bytes(
    scheme: WeightQuantization,
    rows: int,
    inputs: int,
    dtype: torch.dtype,
    device: torch.device,
    embedding: bool = False,
) -> int:
    """Bytes the layer built for an [rows, inputs] weight in `scheme` keeps."""
    if scheme.scheme == "fp8":
        block = FP8_BLOCK if scheme.fp8_blocks else inputs
        return rows * inputs + rows * -(-inputs // block) * FLOAT32_BYTES
    bits = 4 if scheme.scheme == "int4" else 8
    scale_tensors = 2 if scheme.scheme == "int4" else 1  # int4 keeps an offset per scale
    blocks = inputs // BLOCK
    if uses_block_kernel(dtype, device):
        rows = -(-rows // PANEL) * PANEL
        return rows * inputs * bits // 8 + scale_tensors * rows * blocks * FLOAT32_BYTES
    if not embedding and scheme.scheme == "int4" and _half_on_cpu(dtype, device):
        return rows * inputs // 2 + 2 * rows * blocks * dtype.itemsize  # scale and zero
    if not embedding and _int8_packed(scheme, dtype, device):
        return rows * inputs + rows * dtype.itemsize
    return rows * inputs + scale_tensors * rows * blocks * FLOAT32_BYTES


def _int8_packed(scheme: WeightQuantization, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a Linear in `scheme` is torch's int8 pack here (a scale per row)."""
    return scheme.scheme == "int8" and _half_on_cpu(dtype, device)


def _half_on_cpu(dtype: torch.dtype, device: torch.device) -> bool:
    return device.type == "cpu" and dtype in HALF_DTYPES
