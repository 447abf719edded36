"""Weights from a GGUF file (llama.cpp's format) under HF names: dequantized to float32,
or, where asked, the block-quantized types the CPU kernel reads kept in their blocks."""

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader, LlamaFileType, ReaderTensor
from gguf.quants import dequantize

from tome.errors import ModelLoadError, UnsupportedArchitectureError
from tome.kernels.block_quantized_matmul import BlockQuantizedWeight
from tome.loader.error_text import one_line
from tome.loader.gguf_blocks import REPACKED_TYPES, repack
from tome.loader.gguf_kimi_linear import ARCHITECTURE as KIMI_LINEAR
from tome.loader.gguf_kimi_linear import KIMI_NAMES, KIMI_WHOLE_NAMES, restore_delta_tensor
from tome.models.config import ModelConfig

TOP_LEVEL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    # Mixture-of-Experts blocks: the router and Qwen2-MoE's shared expert and its gate.
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
}
# deepseek2 (DeepSeek-V2/V3): latent attention, shared experts under their own name, and
# the router's selection bias.
DEEPSEEK_NAMES = {
    "attn_q_a": "self_attn.q_a_proj",
    "attn_q_a_norm": "self_attn.q_a_layernorm",
    "attn_q_b": "self_attn.q_b_proj",
    "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa",
    "attn_kv_a_norm": "self_attn.kv_a_layernorm",
    "attn_kv_b": "self_attn.kv_b_proj",
    "ffn_gate_shexp": "mlp.shared_experts.gate_proj",
    "ffn_up_shexp": "mlp.shared_experts.up_proj",
    "ffn_down_shexp": "mlp.shared_experts.down_proj",
}
# Per architecture, the block tensors its files add to BLOCK_NAMES (or rename).
ARCHITECTURE_NAMES = {
    "deepseek2": DEEPSEEK_NAMES,
    # Kimi Linear: deepseek2's latent attention and MoE, and KDA.
    KIMI_LINEAR: {**DEEPSEEK_NAMES, **KIMI_NAMES},
}
# Tensors whose whole HF name is given (no .weight/.bias of a module).
WHOLE_NAMES = {"exp_probs_b": "mlp.gate.e_score_correction_bias", **KIMI_WHOLE_NAMES}
# A layer's experts as one 3-D tensor [experts, rows, columns] -> each expert's projection.
EXPERT_TENSORS = {
    "ffn_gate_exps": "gate_proj",
    "ffn_up_exps": "up_proj",
    "ffn_down_exps": "down_proj",
}
# Kimi Linear's ssm_a has no .weight/.bias.
BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)(?:\.(weight|bias))?")
# llama3-style rope scaling factors; our rotary layer derives them from the config.
IGNORED_TENSORS = {"rope_freqs.weight"}
SUPPORTED_ARCHITECTURES = {
    "llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "deepseek2", KIMI_LINEAR,
}  # fmt: skip
# llama.cpp's converter reorders q/k rows only for these (see _undo_rotary_permute).
PERMUTED_ARCHITECTURES = {"llama"}


def iter_gguf_weights(
    path: Path, config: ModelConfig, keep_blocks: bool = False
) -> Iterator[tuple[str, torch.Tensor | BlockQuantizedWeight]]:
    """Every tensor of the file as (HF name, float32 tensor in HF layout); with
    `keep_blocks`, tensors of REPACKED_TYPES come as BlockQuantizedWeight instead.

    The header is parsed before returning, so a corrupt file fails at once."""
    reader = open_gguf(path)
    architecture = _architecture(reader, path)
    names = {**BLOCK_NAMES, **ARCHITECTURE_NAMES.get(architecture, {})}
    permuted = architecture in PERMUTED_ARCHITECTURES
    return _read_tensors(reader, path, config, names, permuted, keep_blocks)


class _FastGGUFReader(GGUFReader):
    """GGUFReader that parses through a plain ndarray view of the file, not the np.memmap.

    Parsing metadata takes ~1M tiny slices (every vocabulary token and merge is its own
    field part) and np.memmap's per-slice bookkeeping makes opening the 135M default
    model take ~3 s instead of ~1 s. GGUFReader.__init__ assigns `self.data` and slices
    it from then on; the view shares the mapping's buffer and keeps it alive."""

    @property
    def data(self) -> np.ndarray:
        return self._plain_view

    @data.setter
    def data(self, mapped: np.memmap) -> None:
        self._plain_view = mapped.view(np.ndarray)


def open_gguf(path: Path) -> GGUFReader:
    try:
        return _FastGGUFReader(path)
    # A truncated or foreign file surfaces as whatever numpy hits first (ValueError,
    # IndexError, KeyError, ...), so any failure here means "not a usable GGUF".
    except Exception as exc:
        raise ModelLoadError(f"{path.name} is not a readable GGUF file: {one_line(exc)}") from exc


# llama.cpp's file types whose tensors are floats.
FLOAT_FILE_TYPES = frozenset({"MOSTLY_F16", "MOSTLY_BF16"})


def gguf_file_type(path: Path) -> str | None:
    """The file's quantization as llama.cpp names it ("Q4_1", "Q4_K_M"), None for a file of
    float tensors (F32, F16, BF16) or one that does not say."""
    field = open_gguf(path).get_field("general.file_type")
    if field is None:
        return None
    try:
        name = LlamaFileType(int(field.contents())).name
    except ValueError:  # a type newer than the gguf package
        return None
    return (
        None
        if name.startswith("ALL_") or name in FLOAT_FILE_TYPES
        else name.removeprefix("MOSTLY_")
    )


def _architecture(reader: GGUFReader, path: Path) -> str:
    field = reader.get_field("general.architecture")
    if field is None:
        raise ModelLoadError(f"{path.name} has no general.architecture metadata")
    architecture = field.contents()
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"{path.name}: GGUF architecture {architecture!r} is not supported; "
            f"supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
        )
    return architecture


def _read_tensors(
    reader: GGUFReader,
    path: Path,
    config: ModelConfig,
    names: dict[str, str],
    permuted: bool,
    keep_blocks: bool,
) -> Iterator[tuple[str, torch.Tensor | BlockQuantizedWeight]]:
    halves: dict[tuple[str, str], np.ndarray] = {}  # (layer, "k" or "v") -> attn_k_b/v_b
    for tensor in reader.tensors:
        if tensor.name in IGNORED_TENSORS:
            continue
        latent_half = _latent_half(tensor.name)
        if latent_half is not None:
            halves[latent_half] = _dequantize(tensor, tensor.data, path)
            joined = _joined_latent_expansion(halves, latent_half[0])
            if joined is not None:
                yield joined
            continue
        expert_tensor = _expert_tensor(tensor.name)
        if expert_tensor is not None:
            # One tensor per expert, as checkpoints name them.
            layer, projection = expert_tensor
            for expert, data in enumerate(tensor.data):
                name = f"model.layers.{layer}.mlp.experts.{expert}.{projection}.weight"
                yield name, _weight(tensor, data, path, keep_blocks)
            continue
        name = _hf_name(tensor.name, path, names)
        # Rows are output features, quantized or not: the permutation moves whole rows.
        data = tensor.data
        if permuted and name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _undo_rotary_permute(data, config.num_attention_heads)
        elif permuted and name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _undo_rotary_permute(data, config.num_key_value_heads)
        weight = _weight(tensor, data, path, keep_blocks)
        # KDA's A and convolutions are never in blocks: too few values a row.
        if isinstance(weight, torch.Tensor):
            weight = restore_delta_tensor(name, weight)
        yield name, weight


def _weight(
    tensor: ReaderTensor, data: np.ndarray, path: Path, keep_blocks: bool
) -> torch.Tensor | BlockQuantizedWeight:
    """`data` (all or part of `tensor`) in blocks where kept, else as float32."""
    if keep_blocks and tensor.tensor_type in REPACKED_TYPES:
        return repack(data, tensor.tensor_type)
    return torch.from_numpy(_dequantize(tensor, data, path))


def _expert_tensor(gguf_name: str) -> tuple[str, str] | None:
    """(layer, projection) of a 3-D tensor of a layer's experts, else None."""
    match = BLOCK_TENSOR.fullmatch(gguf_name)
    if match is None or match[2] not in EXPERT_TENSORS:
        return None
    return match[1], EXPERT_TENSORS[match[2]]


def _hf_name(gguf_name: str, path: Path, names: dict[str, str]) -> str:
    if gguf_name in TOP_LEVEL_NAMES:
        return TOP_LEVEL_NAMES[gguf_name]
    match = BLOCK_TENSOR.fullmatch(gguf_name)
    if match is not None and match[2] in WHOLE_NAMES:
        return f"model.layers.{match[1]}.{WHOLE_NAMES[match[2]]}"
    if match is None or match[2] not in names or match[3] is None:
        raise ModelLoadError(f"{path.name}: unexpected tensor {gguf_name!r} for this architecture")
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{names[part]}.{kind}"


def _latent_half(gguf_name: str) -> tuple[str, str] | None:
    """(layer, "k" or "v") for deepseek2's attn_k_b / attn_v_b, else None."""
    match = BLOCK_TENSOR.fullmatch(gguf_name)
    if match is None or match[2] not in ("attn_k_b", "attn_v_b"):
        return None
    return match[1], match[2][5]


def _joined_latent_expansion(
    halves: dict[tuple[str, str], np.ndarray], layer: str
) -> tuple[str, torch.Tensor] | None:
    """kv_b_proj once both of a layer's halves have come. llama.cpp's converter splits it
    per head into W_UK, stored transposed as [heads, latent, nope], and W_UV [heads, v,
    latent]; HF's kv_b_proj holds each head's nope rows then its v rows."""
    if (layer, "k") not in halves or (layer, "v") not in halves:
        return None
    k_rows = halves.pop((layer, "k")).transpose(0, 2, 1)
    joined = np.concatenate([k_rows, halves.pop((layer, "v"))], axis=1)
    weight = torch.from_numpy(np.ascontiguousarray(joined.reshape(-1, joined.shape[-1])))
    return f"model.layers.{layer}.self_attn.kv_b_proj.weight", weight


def _dequantize(tensor: ReaderTensor, data: np.ndarray, path: Path) -> np.ndarray:
    try:
        weight = dequantize(data, tensor.tensor_type)
    except NotImplementedError as exc:
        raise ModelLoadError(
            f"{path.name}: tensor {tensor.name} is {tensor.tensor_type.name}, "
            "which the installed gguf package cannot dequantize"
        ) from exc
    # F32 tensors come back as read-only views of the mapped file; torch wants its own copy.
    return np.require(weight, dtype=np.float32, requirements=["C_CONTIGUOUS", "WRITEABLE"])


def _undo_rotary_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Put q/k rows (float values or a quantized row's bytes) back in HF order.

    HF's rotary embedding rotates dimension i of a head with i + head_dim/2 (two halves);
    llama.cpp's llama rope rotates adjacent pairs (2i, 2i+1), so its converter interleaves
    each head's two halves. Here, per head, rows (pair, 2) are transposed back to
    (2, pair). Qwen2/3 GGUFs use llama.cpp's half-split ("neox") rope and are not permuted."""
    rows = weight.shape[0]
    per_head = weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
    return np.ascontiguousarray(per_head.swapaxes(1, 2)).reshape(weight.shape)
