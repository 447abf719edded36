"""GGUF's block-quantized tensors unpacked, not expanded, into BlockQuantizedWeight: a
4-bit code a byte with a float scale and offset per 32 weights, or 8-bit codes with a
float scale.

Q4_0, Q4_1 and Q8_0 store blocks of 32 already; Q4_K stores super-blocks of 256 whose
eight sub-blocks of 32 have 6-bit scales and minimums under two float16 factors, and those
products are exact in float32. Every weight the kernel then computes, scale * q + offset,
equals the gguf package's own dequantization bit for bit.

Q6_K (the head and half the down projections of a Q4_K_M file) has sub-blocks of 16 under
their own scales, which one scale per 32 cannot hold exactly: its weights are re-quantized
to 8-bit blocks of 32 (scale = the block's max abs / 127, float32). That moves a weight by
at most half an 8-bit step, about a quarter of Q6_K's own step, and keeps the tensor in
1.1 bytes a weight instead of 4. Other types (Q5, ...) are not repacked: the loader expands
them to float."""

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import Q4_K, dequantize

from tome.kernels.block_quantized_matmul import BlockQuantizedWeight
from tome.layers.kv_quantization import quantize

QUANTS = GGMLQuantizationType
REPACKED_TYPES = frozenset({QUANTS.Q4_0, QUANTS.Q4_1, QUANTS.Q4_K, QUANTS.Q8_0, QUANTS.Q6_K})
# Types kept as re-quantized 8-bit blocks rather than their own codes.
REQUANTIZED_TYPES = frozenset({QUANTS.Q6_K})


def repack(data: np.ndarray, qtype: GGMLQuantizationType) -> BlockQuantizedWeight:
    """A tensor's raw bytes, uint8 [rows, bytes per row] as GGUFReader maps them, in the
    kernel's layout. `qtype` must be one of REPACKED_TYPES."""
    rows = data.shape[0]
    if qtype in REQUANTIZED_TYPES:
        return _requantized_8_bit(dequantize(data, qtype).reshape(rows, -1))
    bits, codes, scales, offsets = _UNPACKERS[qtype](data.reshape(-1))
    return BlockQuantizedWeight(
        bits,
        _tensor(codes.reshape(rows, -1)),
        _tensor(scales.reshape(rows, -1)),
        None if offsets is None else _tensor(offsets.reshape(rows, -1)),
    )


def _tensor(array: np.ndarray) -> torch.Tensor:
    # A copy: the arrays may be views of the read-only mapped file.
    return torch.from_numpy(np.array(array, order="C"))


def _float16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32).reshape(-1)


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """A block's 16 bytes as its 32 codes: weight j in byte j's low nibble, j + 16 high."""
    return np.concatenate([packed & 0x0F, packed >> 4], axis=-1)


def _q4_0(data: np.ndarray):
    blocks = data.reshape(-1, 18)
    scale = _float16(blocks[:, :2])
    # w = scale * (q - 8); scale * q and 8 * scale are exact, so is their difference.
    return 4, _nibbles(blocks[:, 2:]), scale, -8.0 * scale


def _q4_1(data: np.ndarray):
    blocks = data.reshape(-1, 20)
    return 4, _nibbles(blocks[:, 4:]), _float16(blocks[:, :2]), _float16(blocks[:, 2:4])


def _q8_0(data: np.ndarray):
    blocks = data.reshape(-1, 34)
    return 8, blocks[:, 2:], _float16(blocks[:, :2]), None


def _q4_k(data: np.ndarray):
    blocks = data.reshape(-1, 144)
    super_scale, super_min = _float16(blocks[:, :2]), _float16(blocks[:, 2:4])
    sub_scales, sub_mins = Q4_K.get_scale_min(blocks[:, 4:16])
    scales = super_scale[:, None] * sub_scales.astype(np.float32)
    offsets = -(super_min[:, None] * sub_mins.astype(np.float32))
    # Each 32 bytes hold two sub-blocks: the first in the low nibbles, the next in the high.
    packed = blocks[:, 16:].reshape(-1, 4, 1, 32)
    codes = (packed >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0x0F
    return 4, codes, scales, offsets


_UNPACKERS = {QUANTS.Q4_0: _q4_0, QUANTS.Q4_1: _q4_1, QUANTS.Q8_0: _q8_0, QUANTS.Q4_K: _q4_k}


def _requantized_8_bit(weights: np.ndarray) -> BlockQuantizedWeight:
    """Float weights [rows, k] as 8-bit blocks of 32, quantized as the int8 KV cache
    quantizes a row: q = round(w / scale), scale = the block's max abs / 127."""
    rows = weights.shape[0]
    blocks = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32)).view(rows, -1, 32)
    codes, scales = quantize(blocks, torch.int8)
    return BlockQuantizedWeight(8, codes.view(torch.uint8).reshape(rows, -1), scales, None)
