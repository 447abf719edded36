"""compressed-tensors checkpoints (`quant_method: "compressed-tensors"`, written by
llm-compressor) read into BlockQuantizedWeight and Float8Weight.

The config's `config_groups` each give a weight scheme and the modules it `targets`
("Linear", an exact module name, or "re:" and a regex matched at the start of the name);
`ignore` names the modules left in float. Three storage formats are read:

- "pack-quantized": int4 or int8 codes packed densely into int32 `weight_packed` along k,
  value i of a row in bits [i * bits, (i + 1) * bits) of the row's words, each stored as
  q + 2^(bits - 1) (unsigned). `weight_shape` is [n, k]; `weight_scale` [n, 1] (channel) or
  [n, k / group_size] (group); an asymmetric `weight_zero_point` is packed the same way
  but along n, [ceil(n * bits / 32), groups]. The library's weight is (q - zero) * scale.
- "int-quantized": the same q unpacked, int8 `weight` [n, k], zero points unpacked int8.
- "float-quantized": e4m3 `weight` [n, k] times `weight_scale` per tensor [1], per row
  [n, 1], per group [n, k / group_size] or per block (strategy "block") [ceil(n / rows),
  ceil(k / columns)].

4-bit codes are the stored unsigned values u = q + 8 with offset = -scale * (zero + 8), so
scale * u + offset = (q - zero) * scale; 8-bit codes are the signed q, with offsets
-scale * zero only when asymmetric. A group of g weights becomes g / 32 blocks under its
scale and offset. Scales are widened to float32 exactly. Where a scale has at most 20
significant bits (bfloat16 and float16 scales, what llm-compressor writes for bf16 and fp16
models) every product and sum above is exact in float32, so each weight equals the
library's own decompression computed in float32 bit for bit. A float32 scale with more bits
leaves 4-bit and asymmetric 8-bit weights within a few float32 rounding steps of it;
symmetric 8-bit and e4m3 weights, one product each, stay exact."""

import re
import sys
from dataclasses import dataclass
from typing import Any

import torch

from tome.errors import ModelLoadError
from tome.kernels.block_quantized_matmul import BlockQuantizedWeight
from tome.kernels.float8_matmul import FLOAT8, Float8Weight
from tome.loader.quantized_formats import DecodedWeight

BLOCK = 32
PACKED, INT, FLOAT, NAIVE = "pack-quantized", "int-quantized", "float-quantized", "naive-quantized"
# Which weight types each storage format holds ("naive-quantized" is the library's
# fallback name for either unpacked one).
FORMAT_TYPES = {PACKED: {"int"}, INT: {"int"}, FLOAT: {"float"}, NAIVE: {"int", "float"}}
STRATEGIES = {"int": {"channel", "group"}, "float": {"tensor", "channel", "group", "block"}}
# "weight" (an alias of "static") only changed how GPTQ calibrated; the stored layout is
# the same as without act-order. "group" / "dynamic" add a `weight_g_idx` we do not read.
LAYOUT_NEUTRAL_ACTORDER = {None, False, "weight", "static"}


@dataclass(frozen=True)
class Scheme:
    """How one config group's weights are stored."""

    format: str
    type: str  # "int" or "float"
    bits: int
    symmetric: bool
    strategy: str
    group_size: int | None
    block_structure: tuple[int, int] | None


class CompressedTensorsFormat:
    """A compressed-tensors checkpoint's linear layers, decoded by module name."""

    suffixes = frozenset(
        {
            "weight_packed",
            "weight_shape",
            "weight_scale",
            "weight_zero_point",
            # Static activation quantization's parameters: read and dropped, since Tome
            # multiplies by the weights with float activations.
            "input_scale",
            "input_zero_point",
        }
    )

    def __init__(self, schemes: dict[str, Scheme | None], ignore: list[str]) -> None:
        # Target -> scheme in config order, a later group's target replacing an earlier
        # one as in the library's apply_quantization_config; None: a group without
        # weights (activations or KV cache only), whose modules keep float weights.
        self.schemes = schemes
        self.ignore = ignore

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CompressedTensorsFormat":
        """From config.json's `quantization_config`; ModelLoadError for what we cannot read."""
        _expect(config.get("quant_method") == "compressed-tensors", "quant_method", config)
        status = config.get("quantization_status", "compressed")
        _expect(status == "compressed", "quantization_status", config)
        for extra in ("sparsity_config", "transform_config", "moe_sparsity_config"):
            # A sparse layout, an online rotation or pruned experts change what the
            # tensors mean or which there are.
            _expect(not config.get(extra), extra, config)
        default_format = config.get("format")
        schemes: dict[str, Scheme | None] = {}
        for name, group in (config.get("config_groups") or {}).items():
            scheme = _scheme(name, group, default_format)
            for target in group.get("targets") or []:
                schemes[target] = scheme
        if not any(schemes.values()):
            raise ModelLoadError("compressed-tensors config quantizes no weights")
        return cls(schemes, list(config.get("ignore") or []))

    def is_quantized(self, module: str) -> bool:
        """Whether the linear layer `module` (its name in the checkpoint) has quantized
        weights; False for ignored ones and those no group with weights targets."""
        return self.scheme(module) is not None

    def scheme(self, module: str) -> Scheme | None:
        """The scheme of the linear layer `module`, chosen as the library chooses it: no
        scheme if `ignore` matches; else exact-name targets first, then regexes (each
        kind in sorted order), then the class target "Linear"."""
        if any(_matches(target, module) for target in self.ignore):
            return None
        names = sorted((t for t in self.schemes if t != "Linear"), key=lambda t: ("re:" in t, t))
        for target in names:
            if _matches(target, module):
                return self.schemes[target]
        return self.schemes.get("Linear")

    def decode(self, module: str, tensors: dict[str, torch.Tensor]) -> DecodedWeight:
        """The linear layer `module` from its tensors by suffix (with its `weight`)."""
        scheme = self.scheme(module)
        if scheme is None:
            raise ModelLoadError(f"compressed-tensors: {module} is not a quantized layer")
        try:
            if scheme.type == "float":
                return DecodedWeight(_float8(scheme, tensors))
            return DecodedWeight(_integers(scheme, tensors))
        except ModelLoadError as error:
            raise ModelLoadError(f"compressed-tensors {module}: {error.message}") from None


def _expect(condition: bool, key: str, config: dict[str, Any]) -> None:
    if not condition:
        raise ModelLoadError(f"compressed-tensors: unsupported {key} {config.get(key)!r}")


def _scheme(name: str, group: dict[str, Any], default_format: str | None) -> Scheme | None:
    """A config group's weight scheme, checked against what we decode."""
    weights = group.get("weights")
    if weights is None:
        return None

    def unsupported(what: str) -> ModelLoadError:
        return ModelLoadError(f"compressed-tensors group {name}: unsupported {what}")

    storage = group.get("format") or default_format
    kind, bits = weights.get("type", "int"), weights.get("num_bits", 8)
    if storage not in FORMAT_TYPES:
        raise unsupported(f"format {storage!r}")
    if kind not in FORMAT_TYPES[storage]:
        raise unsupported(f"{kind} weights in format {storage!r}")
    if bits not in ({4, 8} if kind == "int" else {8}):
        raise unsupported(f"{bits}-bit {kind} weights")
    group_size = weights.get("group_size")
    strategy = weights.get("strategy") or _implied_strategy(group_size)
    if strategy not in STRATEGIES[kind]:
        raise unsupported(f"strategy {strategy!r} for {kind} weights")
    if strategy == "group" and not (group_size or 0) > 0:
        raise unsupported(f"group_size {group_size}")
    if strategy == "group" and kind == "int" and group_size % BLOCK:
        raise unsupported(f"group_size {group_size} (not a multiple of {BLOCK})")
    if weights.get("dynamic", False):
        raise unsupported(f"dynamic weight scales ({weights.get('dynamic')!r})")
    if weights.get("actorder") not in LAYOUT_NEUTRAL_ACTORDER:
        raise unsupported(f"actorder {weights.get('actorder')!r}")
    symmetric = weights.get("symmetric", True)
    if kind == "float" and not symmetric:
        raise unsupported("asymmetric float weights")
    block = weights.get("block_structure")
    if strategy == "block" and not _positive_pair(block):
        raise unsupported(f"block_structure {block!r}")
    return Scheme(
        storage,
        kind,
        bits,
        symmetric,
        strategy,
        group_size,
        tuple(block) if strategy == "block" else None,
    )


def _positive_pair(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and v > 0 for v in value)
    )


def _implied_strategy(group_size: int | None) -> str:
    # As QuantizationArgs infers it when a config leaves `strategy` out.
    if group_size is None:
        return "tensor"
    return "channel" if group_size == -1 else "group"


def _matches(target: str, module: str) -> bool:
    """Whether a `targets` or `ignore` entry names the linear layer `module`."""
    if target.startswith("re:"):
        return re.match(target[3:], module) is not None
    return target in (module, "Linear")


def _tensor(tensors: dict[str, torch.Tensor], suffix: str) -> torch.Tensor:
    if suffix not in tensors:
        raise ModelLoadError(f"no {suffix} tensor")
    return tensors[suffix]


def _integers(scheme: Scheme, tensors: dict[str, torch.Tensor]) -> BlockQuantizedWeight:
    """pack-quantized or int-quantized integer weights as BlockQuantizedWeight."""
    half = 1 << (scheme.bits - 1)
    if scheme.format == PACKED:
        n, k = _shape(_tensor(tensors, "weight_shape"))
        stored = _unpacked(_tensor(tensors, "weight_packed"), scheme.bits, k)
    else:
        signed = _tensor(tensors, "weight")
        if signed.dtype != torch.int8 or signed.dim() != 2:
            raise ModelLoadError(f"weight is {signed.dtype} {list(signed.shape)}, not int8 [n, k]")
        n, k = signed.shape
        stored = (signed.to(torch.int16) + half).to(torch.uint8)
    if stored.shape != (n, k):
        raise ModelLoadError(f"weight holds {list(stored.shape)} values, not {[n, k]}")
    per_block = _group_length(scheme, k) // BLOCK
    scales = _per_block(_tensor(tensors, "weight_scale"), n, k, per_block)
    zero = None if scheme.symmetric else _zero_points(scheme, tensors, n, k, per_block)
    if scheme.bits == 4:
        # u = q + 8 is already a 0..15 code; zero + 8 is the code of w = 0.
        zero_code = torch.full_like(scales, half) if zero is None else zero + half
        return BlockQuantizedWeight(4, stored.contiguous(), scales, -(scales * zero_code))
    # u ^ 0x80 is q = u - 128 as its two's-complement byte.
    codes = (stored ^ 0x80).contiguous()
    return BlockQuantizedWeight(8, codes, scales, None if zero is None else -(scales * zero))


def _shape(weight_shape: torch.Tensor) -> tuple[int, int]:
    sizes = [int(size) for size in weight_shape.tolist()]
    if len(sizes) != 2:
        raise ModelLoadError(f"weight_shape is {sizes}, not [n, k]")
    return sizes[0], sizes[1]


def _group_length(scheme: Scheme, k: int) -> int:
    """Weights along k under one scale, checked to cover k in blocks of 32."""
    length = k if scheme.strategy == "channel" else scheme.group_size
    if k % length or length % BLOCK:
        raise ModelLoadError(f"k = {k} does not split into groups of {length} in blocks of 32")
    return length


def _zero_points(
    scheme: Scheme, tensors: dict[str, torch.Tensor], n: int, k: int, per_block: int
) -> torch.Tensor:
    """The signed zero points q of w = 0, float32 [n, k / 32]."""
    stored = _tensor(tensors, "weight_zero_point")
    groups = k // (per_block * BLOCK)
    if scheme.format == PACKED:
        # Packed like the weight but along n: one packed row per output feature's column.
        unsigned = _unpacked(stored.t(), scheme.bits, n).t()
        signed = unsigned.to(torch.int32) - (1 << (scheme.bits - 1))
    else:
        signed = stored.to(torch.int32)
    if signed.shape != (n, groups):
        raise ModelLoadError(f"weight_zero_point holds {list(signed.shape)}, not {[n, groups]}")
    return signed.to(torch.float32).repeat_interleave(per_block, dim=1)


def _unpacked(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """int32 [rows, words] as the first `count` unsigned values of each row, uint8
    [rows, count]. Value i lies in bits [i * bits, (i + 1) * bits) of the row's words taken
    as one little-endian bit string. 4- and 8-bit values never straddle a byte, so they are
    read from a byte view of the words, with no wider copy of the layer."""
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise ModelLoadError(f"packed tensor is {packed.dtype} {list(packed.shape)}, not int32 2-D")
    if packed.shape[1] * (32 // bits) < count:
        raise ModelLoadError(f"{packed.shape[1]} packed words cannot hold {count} values")
    data = packed.contiguous().view(torch.uint8)
    if sys.byteorder == "big":  # the bit string's bytes are each word's in reverse
        data = data.view(packed.shape[0], -1, 4).flip(-1).flatten(1)
    if bits == 4:
        # Value 2j in byte j's low nibble, 2j + 1 in its high one.
        data = torch.stack((data & 0x0F, data >> 4), dim=-1).flatten(1)
    return data[:, :count]


def _per_block(scale: torch.Tensor, n: int, k: int, per_block: int) -> torch.Tensor:
    """A group's scale on each of its blocks of 32: float32 [n, k / 32]."""
    groups = k // (per_block * BLOCK)
    if scale.shape != (n, groups):
        raise ModelLoadError(f"weight_scale is {list(scale.shape)}, not {[n, groups]}")
    return scale.to(torch.float32).repeat_interleave(per_block, dim=1).contiguous()


def _float8(scheme: Scheme, tensors: dict[str, torch.Tensor]) -> Float8Weight:
    """float-quantized e4m3 weights as Float8Weight."""
    values = _tensor(tensors, "weight")
    if values.dtype != FLOAT8 or values.dim() != 2:
        raise ModelLoadError(f"weight is {values.dtype} {list(values.shape)}, not e4m3 [n, k]")
    n, k = values.shape
    scale = _tensor(tensors, "weight_scale").to(torch.float32)
    if scheme.strategy == "tensor" and scale.numel() == 1:
        scale = scale.reshape(1)  # some writers store the one scale as a 0-d tensor
    if scheme.strategy == "block":
        rows, block_k = scheme.block_structure
        expected = (-(-n // rows), -(-k // block_k))
    else:
        rows, block_k = 1, scheme.group_size if scheme.strategy == "group" else k
        expected = (1,) if scheme.strategy == "tensor" else (n, -(-k // block_k))
    if scale.shape != expected:
        raise ModelLoadError(f"weight_scale is {list(scale.shape)}, not {list(expected)}")
    # Per tensor: the one scale on every row; per block: a row block's scales on each row.
    rows_scales = scale.expand(n, 1) if scheme.strategy == "tensor" else scale
    rows_scales = rows_scales.repeat_interleave(rows, dim=0)[:n]
    return Float8Weight(values, rows_scales.contiguous(), block_k)
