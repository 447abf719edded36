"""FP8 checkpoints (`quant_method: "fp8"`: DeepSeek-V3, Kimi-K2, Qwen3-FP8 and the per-tensor
FP8 files of AutoFP8) read into Float8Weight.

With `weight_block_size` [rows, columns] (DeepSeek-V3's [128, 128]), a linear layer keeps
its e4m3 `weight` [n, k] and a float32 `weight_scale_inv` [ceil(n / rows), ceil(k /
columns)], the last row and column blocks partial where n or k is not a multiple. Despite
the name the scale multiplies: W = weight * weight_scale_inv over each block
(`weight_dequant` in DeepSeek-V3's inference/kernel.py computes y = x * s, as transformers'
finegrained_fp8 does). Float8Weight holds a block's scale on each of its rows, block_k =
columns, so every weight is value * scale in float32 as in those references.

Without `weight_block_size` the one scale covers the whole tensor: vLLM and AutoFP8 name it
`weight_scale`, transformers `weight_scale_inv`; both multiply. It becomes one scale per
row, block_k = k. A missing `weight_block_size` is read as vLLM reads it, per tensor (the
files without one are AutoFP8's); transformers' FineGrainedFP8Config would default it to
[128, 128], and a block scale met here fails to decode, naming its shape.

Scales written as "ue8m0" (`scale_fmt`, DeepSeek-V3.1's and MXFP8 files) are powers of two;
float8_e8m0fnu, and raw uint8 exponent bytes under that format, widen to float32 exactly.
Activation scales (`activation_scheme: "static"`) are read and dropped: Tome multiplies by
the weights with float activations."""

from typing import Any

import torch

from tome.errors import ModelLoadError
from tome.kernels.float8_matmul import FLOAT8, Float8Weight
from tome.loader.quantized_formats import DecodedWeight

# Config keys read, with the default a missing one takes and the values decoded.
ACCEPTED = {
    "quant_method": (None, ("fp8",)),
    "fmt": ("e4m3", ("e4m3",)),
    "activation_scheme": ("dynamic", ("dynamic", "static")),
    "scale_fmt": ("float", ("float", "ue8m0")),
    # DeepSeek-V4's experts hold FP4 pairs in int8 under the same quant_method.
    "expert_dtype": ("fp8", ("fp8",)),
}
SCALE_DTYPES = {torch.float32, torch.bfloat16, torch.float16, torch.float8_e8m0fnu}


class Fp8BlockFormat:
    """An FP8 checkpoint's linear layers: e4m3 weights under per-block or per-tensor scales."""

    suffixes = frozenset({"weight_scale_inv", "weight_scale", "input_scale", "activation_scale"})

    def __init__(self, block: tuple[int, int] | None, exponent_scales: bool) -> None:
        self.block = block
        # scale_fmt "ue8m0": uint8 scales are e8m0 exponent bytes.
        self.exponent_scales = exponent_scales

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Fp8BlockFormat":
        """From config.json's `quantization_config`; ModelLoadError for what we cannot read."""
        for key, (default, accepted) in ACCEPTED.items():
            _expect(config.get(key, default) in accepted, key, config)
        block = config.get("weight_block_size")
        valid_block = isinstance(block, list | tuple) and len(block) == 2
        valid_block = valid_block and all(isinstance(v, int) and v > 0 for v in block)
        _expect(block is None or valid_block, "weight_block_size", config)
        return cls(None if block is None else tuple(block), config.get("scale_fmt") == "ue8m0")

    def decode(self, module: str, tensors: dict[str, torch.Tensor]) -> DecodedWeight:
        """The linear layer `module` from its `weight` and scale tensors by suffix."""
        try:
            return DecodedWeight(self._weight(tensors))
        except ModelLoadError as error:
            raise ModelLoadError(f"fp8 {module}: {error.message}") from None

    def _weight(self, tensors: dict[str, torch.Tensor]) -> Float8Weight:
        values = tensors.get("weight")
        if values is None or values.dtype != FLOAT8 or values.dim() != 2:
            found = "none" if values is None else f"{values.dtype} {list(values.shape)}"
            raise ModelLoadError(f"weight is {found}, not e4m3 [n, k]")
        n, k = values.shape
        if self.block is None:
            scale = self._scale(tensors, "weight_scale_inv", "weight_scale")
            if scale.numel() != 1:
                raise ModelLoadError(f"per-tensor scale is {list(scale.shape)}, not one value")
            return Float8Weight(values, scale.reshape(1, 1).expand(n, 1).contiguous(), k)
        rows, columns = self.block
        scale = self._scale(tensors, "weight_scale_inv")
        expected = (-(-n // rows), -(-k // columns))
        if scale.shape != expected:
            raise ModelLoadError(f"weight_scale_inv is {list(scale.shape)}, not {list(expected)}")
        # A row block's scales on each of its rows, the last block cut to n.
        per_row = scale.repeat_interleave(rows, dim=0)[:n].contiguous()
        return Float8Weight(values, per_row, columns)

    def _scale(self, tensors: dict[str, torch.Tensor], *suffixes: str) -> torch.Tensor:
        """The first of `suffixes` present, widened to float32."""
        found = [tensors[suffix] for suffix in suffixes if suffix in tensors]
        if not found:
            raise ModelLoadError(f"no {' or '.join(suffixes)} tensor")
        scale = found[0]
        if scale.dtype == torch.uint8 and self.exponent_scales:
            scale = scale.view(torch.float8_e8m0fnu)
        if scale.dtype not in SCALE_DTYPES:
            raise ModelLoadError(f"scale is {scale.dtype}")
        return scale.to(torch.float32)


def _expect(condition: bool, key: str, config: dict[str, Any]) -> None:
    if not condition:
        raise ModelLoadError(f"fp8: unsupported {key} {config.get(key)!r}")
