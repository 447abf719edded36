"""AWQ and GPTQ checkpoints decode into the weights their formats define.

Checkpoint tensors are packed here by small packers written from each format's documented
layout (not with the decoders' helpers), from random codes, zeros and scales; the decoded
BlockQuantizedWeight, expanded as scale * q + offset (and its input_order applied), must
equal scale * (q - z) computed here from those same numbers, bit for bit. Each format also
has a word worked out by hand, and bad configs and tensors must raise one-line
ModelLoadErrors."""

import numpy as np
import pytest
import torch

from tome.errors import ModelLoadError
from tome.kernels.block_quantized_matmul import dequantize_transposed, kernel_library, pack
from tome.loader.quantized_formats.awq import AwqFormat
from tome.loader.quantized_formats.gptq import GptqFormat

# AWQ's interleave, as AutoAWQ's WQLinear_GEMM.from_linear packs it (order_map).
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def _int32(words: np.ndarray) -> torch.Tensor:
    """uint32 words as the int32 tensor a safetensors file holds (same bits)."""
    return torch.from_numpy(words.astype(np.uint32).view(np.int32).copy())


def _awq_pack(values: torch.Tensor) -> torch.Tensor:
    """int [rows, n] of 0..15 to AWQ int32 [rows, n / 8]: the value of column
    8 * j + AWQ_ORDER[i] goes to bits 4i..4i+3 of word j (nibble i shifted left by 4i)."""
    v = values.numpy().astype(np.uint32)
    words = np.zeros((v.shape[0], v.shape[1] // 8), dtype=np.uint32)
    for j in range(words.shape[1]):
        for i in range(8):
            words[:, j] |= v[:, 8 * j + AWQ_ORDER[i]] << np.uint32(4 * i)
    return _int32(words)


def _gptq_words(fields: list[np.ndarray], bits: int) -> np.ndarray:
    """Fields 0, 1, ... of each word, field j shifted left by bits * j (low bits first)."""
    words = np.zeros(fields[0].shape, dtype=np.uint32)
    for j, field in enumerate(fields):
        words |= field.astype(np.uint32) << np.uint32(bits * j)
    return words


def _gptq_pack_rows(values: torch.Tensor, bits: int) -> np.ndarray:
    """[k, n] to [k * bits / 32, n] words: row p * i + j is field j of word i, p = 32 / bits."""
    p = 32 // bits
    v = values.numpy()
    return _gptq_words([v[j::p] for j in range(p)], bits)


def _gptq_pack_columns(values: torch.Tensor, bits: int) -> np.ndarray:
    """[g, n] to [g, n * bits / 32] words: column p * i + j is field j of word i."""
    p = 32 // bits
    v = values.numpy()
    return _gptq_words([v[:, j::p] for j in range(p)], bits)


def _gptq_v1_zeros(zeros: torch.Tensor, bits: int) -> np.ndarray:
    """v1 stores z - 1. A zero of 0 gives -1; GPTQModel writes v1 by subtracting 1 from every
    field of the v2 word at once (0x11111111 for 4 bits), so that -1 borrows from the next
    field, and the word wraps modulo 2 ** 32."""
    ones = sum(1 << (bits * j) for j in range(32 // bits))
    v2 = _gptq_pack_columns(zeros, bits).astype(np.int64)
    return ((v2 - ones) % (1 << 32)).astype(np.uint32)


def _expanded(decoded) -> torch.Tensor:
    """The decoded weight as float32 [n, k] in the original input column order."""
    weight = decoded.weight
    codes = weight.codes.view(torch.int8) if weight.bits == 8 else weight.codes
    expanded = weight.scales.repeat_interleave(32, dim=1) * codes.float()
    if weight.offsets is not None:
        expanded = expanded + weight.offsets.repeat_interleave(32, dim=1)
    if decoded.input_order is None:
        return expanded
    # y = x[..., order] @ W'^T: column m of W' multiplies input column order[m].
    natural = torch.empty_like(expanded)
    natural[:, decoded.input_order] = expanded
    return natural


def _reference(q, z, scales, g_idx) -> torch.Tensor:
    """w[o, i] = scales[g_idx[i], o] * (q[i, o] - z[g_idx[i], o]), float32 [n, k]; exact,
    since a float16 scale times an integer below 256 needs at most 19 bits."""
    s = scales.float()[g_idx]  # [k, n]
    return (s * (q.long() - z.long()[g_idx]).float()).T


def _scales(groups: int, n: int, gen: torch.Generator, dtype=torch.float16) -> torch.Tensor:
    return (torch.randn(groups, n, generator=gen) * 0.02).to(dtype)


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


# --- AWQ ---


@pytest.mark.parametrize(
    ("k", "n", "group_size"), [(64, 16, 32), (256, 24, 128), (96, 8, -1), (128, 40, 64)]
)
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
def test_awq_decodes_to_the_format_weight(k, n, group_size, scale_dtype):
    gen = torch.Generator().manual_seed(k + n)
    g = k if group_size == -1 else group_size
    q = torch.randint(0, 16, (k, n), generator=gen)
    z = torch.randint(0, 16, (k // g, n), generator=gen)
    scales = _scales(k // g, n, gen, scale_dtype)
    tensors = {"qweight": _awq_pack(q), "qzeros": _awq_pack(z), "scales": scales}
    config = {"quant_method": "awq", "bits": 4, "group_size": group_size}
    config |= {"zero_point": True, "version": "GEMM"}
    decoded = AwqFormat.from_config(config).decode("layer", tensors)
    assert decoded.input_order is None
    assert decoded.weight.bits == 4 and decoded.weight.codes.dtype == torch.uint8
    assert torch.equal(decoded.weight.codes, q.T.to(torch.uint8))
    g_idx = torch.arange(k) // g
    assert torch.equal(_expanded(decoded), _reference(q, z, scales, g_idx))


def test_awq_without_zero_point_is_centred_on_8():
    gen = torch.Generator().manual_seed(0)
    k, n = 64, 16
    q = torch.randint(0, 16, (k, n), generator=gen)
    scales = _scales(2, n, gen)
    config = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": False}
    awq = AwqFormat.from_config(config)
    eight = torch.full((2, n), 8)
    expected = _reference(q, eight, scales, torch.arange(k) // 32)
    # Without qzeros, and with the qzeros of 8 GPTQModel writes for such checkpoints.
    for tensors in (
        {"qweight": _awq_pack(q), "scales": scales},
        {"qweight": _awq_pack(q), "qzeros": _awq_pack(eight), "scales": scales},
    ):
        assert torch.equal(_expanded(awq.decode("layer", tensors)), expected)


def test_awq_word_worked_by_hand():
    # 0x87654321 holds nibbles 1, 2, ..., 8 in bits 0-3, 4-7, ..., 28-31. Nibble i is column
    # AWQ_ORDER[i]: column 0 <- 1, 2 <- 2, 4 <- 3, 6 <- 4, 1 <- 5, 3 <- 6, 5 <- 7, 7 <- 8,
    # so columns 0..7 read 1, 5, 2, 6, 3, 7, 4, 8. The word is negative as an int32.
    qweight = torch.full((32, 1), 0x87654321 - (1 << 32), dtype=torch.int32)
    # 0xF0000000: nibble 7 is 15, so column AWQ_ORDER[7] = 7 has zero 15, the others 0.
    qzeros = torch.tensor([[0xF0000000 - (1 << 32)]], dtype=torch.int32)
    scales = torch.tensor([[0.5, 1, 1, 1, 1, 1, 1, 0.25]], dtype=torch.float16)
    config = {"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemm"}
    weight = (
        AwqFormat.from_config(config)
        .decode("layer", {"qweight": qweight, "qzeros": qzeros, "scales": scales})
        .weight
    )
    expected_codes = torch.tensor([1, 5, 2, 6, 3, 7, 4, 8], dtype=torch.uint8)
    assert torch.equal(weight.codes, expected_codes[:, None].expand(8, 32))
    assert weight.scales.flatten().tolist() == [0.5, 1, 1, 1, 1, 1, 1, 0.25]
    # offset = -scale * z: -0.25 * 15 in column 7, zero elsewhere.
    assert weight.offsets.flatten().tolist() == [0] * 7 + [-3.75]


# --- GPTQ ---


def _gptq_case(k, n, bits, group_size, g_idx_kind, seed, zeros_low=0, symmetric=False):
    """Random q, z, scales, g_idx and the checkpoint's v2 tensors."""
    gen = torch.Generator().manual_seed(seed)
    g = k if group_size == -1 else group_size
    groups = -(-k // g)
    q = torch.randint(0, 1 << bits, (k, n), generator=gen)
    if symmetric:
        z = torch.full((groups, n), 1 << (bits - 1))
    else:
        z = torch.randint(zeros_low, 1 << bits, (groups, n), generator=gen)
    scales = _scales(groups, n, gen)
    g_idx = torch.arange(k) // g
    if g_idx_kind == "act_order":
        g_idx = g_idx[torch.randperm(k, generator=gen)]
    tensors = {
        "qweight": _int32(_gptq_pack_rows(q, bits)),
        "qzeros": _int32(_gptq_pack_columns(z, bits)),
        "scales": scales,
    }
    if g_idx_kind != "absent":
        tensors["g_idx"] = g_idx.to(torch.int32)
    return q, z, scales, g_idx, tensors


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(
    ("k", "n", "group_size"), [(64, 16, 32), (256, 24, 128), (96, 8, -1), (320, 8, 64)]
)
@pytest.mark.parametrize("g_idx_kind", ["natural", "absent", "act_order"])
def test_gptq_v2_decodes_to_the_format_weight(bits, k, n, group_size, g_idx_kind):
    q, z, scales, g_idx, tensors = _gptq_case(k, n, bits, group_size, g_idx_kind, seed=k + n)
    config = {"quant_method": "gptq", "bits": bits, "group_size": group_size}
    config |= {"desc_act": g_idx_kind == "act_order", "checkpoint_format": "gptq_v2"}
    decoded = GptqFormat.from_config(config).decode("layer", tensors)
    weight = decoded.weight
    assert weight.bits == bits and weight.codes.dtype == torch.uint8
    assert weight.scales.shape == weight.offsets.shape == (n, k // 32)
    if g_idx_kind == "act_order" and group_size != -1:
        order = decoded.input_order
        assert order.dtype == torch.int64 and torch.equal(order.sort().values, torch.arange(k))
        # Each block of 32 in the new order lies in one group.
        assert (g_idx[order].view(-1, 32) == g_idx[order][::32, None]).all()
    else:
        assert decoded.input_order is None
    assert torch.equal(_expanded(decoded), _reference(q, z, scales, g_idx))


@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_v1_zeros_are_stored_minus_one(bits):
    # Zeros from 1 up: every field holds z - 1 without a borrow, as AutoGPTQ writes them.
    q, z, scales, g_idx, tensors = _gptq_case(128, 16, bits, 32, "natural", seed=1, zeros_low=1)
    tensors["qzeros"] = _int32(_gptq_pack_columns(z - 1, bits))
    config = {"bits": bits, "group_size": 32, "desc_act": False, "sym": False}
    decoded = GptqFormat.from_config(config).decode("layer", tensors)
    assert torch.equal(_expanded(decoded), _reference(q, z, scales, g_idx))


@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_v1_zero_of_zero_borrows_and_carries(bits):
    # Zeros of 0 included, written with GPTQModel's borrow across fields; act-order too.
    q, z, scales, g_idx, tensors = _gptq_case(256, 16, bits, 64, "act_order", seed=2)
    z[0, :8] = 0
    tensors["qzeros"] = _int32(_gptq_v1_zeros(z, bits))
    config = {"bits": bits, "group_size": 64, "desc_act": True, "checkpoint_format": "gptq"}
    decoded = GptqFormat.from_config(config).decode("layer", tensors)
    assert torch.equal(_expanded(decoded), _reference(q, z, scales, g_idx))


def test_gptq_unsorted_g_idx_without_desc_act_is_reordered():
    q, z, scales, g_idx, tensors = _gptq_case(128, 8, 4, 32, "act_order", seed=3)
    config = {"bits": 4, "group_size": 32, "desc_act": False, "checkpoint_format": "gptq_v2"}
    decoded = GptqFormat.from_config(config).decode("layer", tensors)
    assert decoded.input_order is not None
    assert torch.equal(_expanded(decoded), _reference(q, z, scales, g_idx))


def test_gptq_symmetric_8_bit_has_no_offsets():
    q, z, scales, g_idx, tensors = _gptq_case(128, 16, 8, 64, "natural", seed=4, symmetric=True)
    tensors["qzeros"] = _int32(_gptq_pack_columns(z - 1, 8))  # v1: 127 in every field
    decoded = GptqFormat.from_config({"bits": 8, "group_size": 64}).decode("layer", tensors)
    assert decoded.weight.offsets is None
    assert torch.equal(decoded.weight.codes.view(torch.int8), (q - 128).T.to(torch.int8))
    assert torch.equal(_expanded(decoded), _reference(q, z, scales, g_idx))


def test_gptq_4_bit_word_worked_by_hand():
    # qweight word 0x87654321 (negative as an int32) in column 0 of word row 0: rows 0..7,
    # low bits first, read 1, 2, ..., 8. The other rows and columns are 0.
    qweight = torch.zeros(4, 8, dtype=torch.int32)
    qweight[0, 0] = 0x87654321 - (1 << 32)
    # v1 zeros for columns 0..7 of [0, 8, 8, 8, 8, 8, 8, 8]: the v2 word 0x88888880 minus
    # 0x11111111 is 0x7777776F (field 0 wraps to F and borrows, field 1 becomes 6). Adding
    # 0x11111111 back gives 0x88888880: zeros 0, 8, ..., 8 (not 16 or 7 for fields 0, 1).
    qzeros = torch.tensor([[0x7777776F]], dtype=torch.int32)
    scales = torch.ones(1, 8, dtype=torch.float16)
    tensors = {"qweight": qweight, "qzeros": qzeros, "scales": scales}
    weight = GptqFormat.from_config({"bits": 4, "group_size": 32}).decode("layer", tensors).weight
    assert weight.codes[0, :8].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert weight.codes[0, 8:].eq(0).all() and weight.codes[1:].eq(0).all()
    assert weight.offsets.flatten().tolist() == [0, -8, -8, -8, -8, -8, -8, -8]


def test_gptq_8_bit_word_worked_by_hand():
    # 0x80FF7F01 holds bytes 0x01, 0x7F, 0xFF, 0x80 from the low end: rows 0..3 read q = 1,
    # 127, 255, 128, stored as q - 128 = -127, -1, 127, 0, i.e. bytes 0x81, 0xFF, 0x7F, 0x00.
    qweight = torch.zeros(8, 4, dtype=torch.int32)
    qweight[0, 0] = 0x80FF7F01 - (1 << 32)
    qzeros = torch.tensor([[0x7F7F7F7F]], dtype=torch.int32)  # v1: 127 + 1 = 128, symmetric
    scales = torch.ones(1, 4, dtype=torch.float16)
    tensors = {"qweight": qweight, "qzeros": qzeros, "scales": scales}
    weight = GptqFormat.from_config({"bits": 8, "group_size": -1}).decode("layer", tensors).weight
    assert weight.offsets is None
    assert weight.codes[0, :4].tolist() == [0x81, 0xFF, 0x7F, 0x00]
    assert weight.codes[0, 4:].eq(0x80).all()  # q = 0 is -128


@pytest.mark.skipif(kernel_library() is None, reason="no C++ compiler here")
def test_decoded_weights_run_in_the_block_kernel():
    q, z, scales, g_idx, tensors = _gptq_case(128, 16, 8, 64, "natural", seed=5, symmetric=True)
    gptq = GptqFormat.from_config({"bits": 8, "group_size": 64, "checkpoint_format": "gptq_v2"})
    weight = gptq.decode("layer", tensors).weight
    assert torch.equal(dequantize_transposed(pack(weight)).T, _reference(q, z, scales, g_idx))
    q, z, scales, g_idx, tensors = _gptq_case(128, 16, 4, 32, "natural", seed=6)
    awq_tensors = {"qweight": _awq_pack(q), "qzeros": _awq_pack(z), "scales": scales}
    awq = AwqFormat.from_config({"bits": 4, "group_size": 32})
    weight = awq.decode("layer", awq_tensors).weight
    assert torch.equal(dequantize_transposed(pack(weight)).T, _reference(q, z, scales, g_idx))


# --- errors ---


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"bits": 8, "group_size": 128}, "bits 8"),
        ({"bits": 4, "group_size": 128, "version": "gemv"}, "version 'gemv'"),
        ({"bits": 4, "group_size": 100}, "group_size 100"),
        ({"bits": 4, "group_size": 0}, "group_size 0"),
        ({"bits": 4, "group_size": "128"}, "group_size '128'"),
        ({"bits": 4, "group_size": 128, "zero_point": "yes"}, "zero_point 'yes'"),
        ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "quant_method 'gptq'"),
    ],
)
def test_awq_rejects_unsupported_configs(config, named):
    with pytest.raises(ModelLoadError) as error:
        AwqFormat.from_config(config)
    assert named in _one_line(error)


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"bits": 3, "group_size": 128}, "bits 3"),
        ({"bits": 2, "group_size": 128}, "bits 2"),
        ({"bits": 4.0, "group_size": 128}, "bits 4.0"),
        ({"bits": 4, "group_size": 48}, "group_size 48"),
        ({"bits": 4, "group_size": -2}, "group_size -2"),
        ({"bits": 4, "group_size": 128, "checkpoint_format": "marlin"}, "'marlin'"),
        ({"bits": 4, "group_size": 128, "pack_dtype": "int16"}, "pack_dtype 'int16'"),
        ({"bits": 4, "group_size": 128, "desc_act": "true"}, "desc_act 'true'"),
        ({"bits": 4, "group_size": 128, "dynamic": {"-:.*lm_head": {}}}, "dynamic"),
        ({"quant_method": "awq", "bits": 4, "group_size": 128}, "quant_method 'awq'"),
    ],
)
def test_gptq_rejects_unsupported_configs(config, named):
    with pytest.raises(ModelLoadError) as error:
        GptqFormat.from_config(config)
    assert named in _one_line(error)


def _awq_tensors() -> dict[str, torch.Tensor]:
    return {
        "qweight": torch.zeros(64, 2, dtype=torch.int32),
        "qzeros": torch.zeros(2, 2, dtype=torch.int32),
        "scales": torch.ones(2, 16, dtype=torch.float16),
    }


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"scales": torch.ones(2, 8, dtype=torch.float16)}, "scales"),
        ({"scales": torch.ones(2, 16, dtype=torch.float32)}, "scales"),
        ({"qzeros": torch.zeros(1, 2, dtype=torch.int32)}, "qzeros"),
        ({"qweight": torch.zeros(64, 2, dtype=torch.int64)}, "qweight"),
        ({"qweight": torch.zeros(48, 2, dtype=torch.int32)}, "qweight"),  # k not whole groups
        ({"qzeros": None}, "qzeros"),  # zero_point true needs them
        ({"qweight": None}, "qweight"),
    ],
)
def test_awq_rejects_mismatched_tensors(change, named):
    tensors = {key: value for key, value in (_awq_tensors() | change).items() if value is not None}
    awq = AwqFormat.from_config({"bits": 4, "group_size": 32})
    with pytest.raises(ModelLoadError) as error:
        awq.decode("model.layers.0.mlp.up_proj", tensors)
    message = _one_line(error)
    assert message.startswith("model.layers.0.mlp.up_proj: ") and named in message


def _gptq_tensors() -> dict[str, torch.Tensor]:
    return {
        "qweight": torch.zeros(8, 16, dtype=torch.int32),  # k = 64, n = 16
        "qzeros": torch.zeros(2, 2, dtype=torch.int32),
        "scales": torch.ones(2, 16, dtype=torch.float16),
        "g_idx": (torch.arange(64) // 32).to(torch.int32),
    }


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"scales": torch.ones(3, 16, dtype=torch.float16)}, "scales"),
        ({"qzeros": torch.zeros(2, 4, dtype=torch.int32)}, "qzeros"),
        ({"qweight": torch.zeros(8, 16, dtype=torch.float16)}, "qweight"),
        ({"qweight": torch.zeros(6, 16, dtype=torch.int32)}, "qweight"),  # k = 48
        ({"qweight": torch.zeros(8, 12, dtype=torch.int32)}, "qweight"),  # n not whole words
        ({"g_idx": torch.zeros(63, dtype=torch.int32)}, "g_idx"),
        ({"g_idx": torch.full((64,), 2, dtype=torch.int32)}, "g_idx"),  # group out of range
        ({"g_idx": (torch.arange(64) % 3 == 0).to(torch.int32)}, "group 0 has 42"),
        ({"qzeros": None}, "qzeros"),
    ],
)
def test_gptq_rejects_mismatched_tensors(change, named):
    tensors = {key: value for key, value in (_gptq_tensors() | change).items() if value is not None}
    gptq = GptqFormat.from_config({"bits": 4, "group_size": 32})
    with pytest.raises(ModelLoadError) as error:
        gptq.decode("model.layers.0.self_attn.q_proj", tensors)
    message = _one_line(error)
    assert message.startswith("model.layers.0.self_attn.q_proj: ") and named in message


def test_gptq_desc_act_needs_g_idx():
    tensors = _gptq_tensors()
    del tensors["g_idx"]
    gptq = GptqFormat.from_config({"bits": 4, "group_size": 32, "desc_act": True})
    with pytest.raises(ModelLoadError) as error:
        gptq.decode("layer", tensors)
    assert "g_idx" in _one_line(error)
