"""Compiles every kernel down to a CUDA binary for a GPU architecture, on a machine without
one: Triton's own compiler and ptxas catch what its CPU interpreter lets through (globals
that are not constexpr, layouts tl.dot cannot take, register overflows).

    python -m tome.kernels.compile_check [compute capability, default 90]"""

import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from tome.kernels import (
    kda_recurrent,
    kv_store,
    paged_decode_attention,
    paged_prefill_attention,
    sparse_prefill_attention,
    triton_experts,
    triton_layer_ops,
    triton_quantized_matmul,
)
from tome.kernels.dot_dtype import dot_dtype, dot_precision

FLOAT_POINTERS = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}


def compile_kernel(kernel, pointers: dict[str, str], constants: dict, capability: int) -> None:
    """Every argument not named in `pointers` (name -> Triton type) is an int32 scalar."""
    signature = dict.fromkeys(kernel.arg_names, "i32") | pointers
    signature |= dict.fromkeys(constants, "constexpr")
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants)
    triton.compile(source, target=GPUTarget("cuda", capability, 32))


def store_kernel(cache: str, integer: bool, capability: int) -> None:
    pointers = dict(
        k_ptr="*bf16",
        v_ptr="*bf16",
        k_cache_ptr=cache,
        v_cache_ptr=cache,
        k_scale_ptr="*fp32",
        v_scale_ptr="*fp32",
        slot_mapping_ptr="*i64",
    )
    limit = 127.0 if integer else 448.0
    constants = dict(QUANTIZED=True, INTEGER=integer, LIMIT=limit, BLOCK_H=8, BLOCK_D=128)
    compile_kernel(kv_store._store_kv_kernel, pointers, constants, capability)


def attention_pointers(kernel, cache: str, dtype: torch.dtype) -> dict[str, str]:
    """The types of the attention kernels' pointer arguments that `kernel` takes."""
    floats = FLOAT_POINTERS[dtype]
    pointers = dict(
        q_ptr=floats,
        out_ptr=floats,
        k_cache_ptr=cache,
        v_cache_ptr=cache,
        k_scale_ptr="*fp32",
        v_scale_ptr="*fp32",
        block_tables_ptr="*i64",
        context_lens_ptr="*i64",
        query_start_loc_ptr="*i64",
        seq_ids_ptr="*i32",
        partial_out_ptr="*fp32",
        partial_lse_ptr="*fp32",
        qk_scale="fp32",
    )
    return {name: kind for name, kind in pointers.items() if name in kernel.arg_names}


def tile_constants(dtype: torch.dtype, quantized: bool) -> dict:
    """The dense and sparse prefill kernels' tile sizes and dtypes: the launchers' defaults."""
    return dict(
        BLOCK_M=64,
        BLOCK_N=64,
        BLOCK_D=128,
        QUANTIZED=quantized,
        DOT_DTYPE=dot_dtype(dtype),
        PRECISION=dot_precision(dtype),
    )


def decode_kernels(cache: str, dtype: torch.dtype, quantized: bool, capability: int) -> None:
    kernel = paged_decode_attention._decode_partition_kernel
    pointers = attention_pointers(kernel, cache, dtype)
    for direct in (True, False):
        constants = dict(
            PARTITION_SIZE=512,
            BLOCK_N=64,
            BLOCK_H=16,
            BLOCK_D=128,
            QUANTIZED=quantized,
            DOT_DTYPE=dot_dtype(dtype),
            PRECISION=dot_precision(dtype),
            DIRECT=direct,
        )
        compile_kernel(kernel, pointers, constants, capability)
    merge = paged_decode_attention._merge_partitions_kernel
    pointers = dict(
        out_ptr=FLOAT_POINTERS[dtype],
        partial_out_ptr="*fp32",
        partial_lse_ptr="*fp32",
        context_lens_ptr="*i64",
    )
    compile_kernel(merge, pointers, dict(PARTITION_SIZE=512, BLOCK_P=32, BLOCK_D=128), capability)


def prefill_kernel(cache: str, dtype: torch.dtype, quantized: bool, capability: int) -> None:
    kernel = paged_prefill_attention._prefill_kernel
    pointers = attention_pointers(kernel, cache, dtype)
    compile_kernel(kernel, pointers, tile_constants(dtype, quantized), capability)


def sparse_prefill_kernel(cache: str, dtype: torch.dtype, quantized: bool, capability: int):
    kernel = sparse_prefill_attention._sparse_prefill_kernel
    pointers = attention_pointers(kernel, cache, dtype)
    pointers |= dict(table_ptr="*i64", columns_ptr="*u8", distances_ptr="*u8")
    pointers |= {
        name: "*i32"
        for name in kernel.arg_names
        if name.startswith(("range_", "column_")) and name.endswith("_ptr")
    }
    compile_kernel(kernel, pointers, tile_constants(dtype, quantized), capability)


def layer_op_kernels(capability: int) -> None:
    """RMSNorm (with the residual add), rotary and SiLU-and-multiply in bf16 and float32."""
    for floats in ("*bf16", "*fp32"):
        norm = dict(x_ptr=floats, residual_ptr=floats, weight_ptr=floats, out_ptr=floats)
        compile_kernel(
            triton_layer_ops._rms_norm_kernel,
            norm | dict(eps="fp32"),
            dict(ADD=True, BLOCK=4096),
            capability,
        )
        compile_kernel(
            triton_layer_ops._rotary_kernel,
            dict(x_ptr=floats, cos_ptr=floats, sin_ptr=floats),
            dict(BLOCK_H=32, BLOCK_HALF=64),
            capability,
        )
        compile_kernel(
            triton_layer_ops._silu_and_mul_kernel,
            dict(gate_up_ptr=floats, out_ptr=floats),
            dict(BLOCK=1024),
            capability,
        )


def expert_kernel(capability: int) -> None:
    """The grouped expert product in bf16 (on tensor cores) and float32."""
    for dtype in (torch.bfloat16, torch.float32):
        floats = FLOAT_POINTERS[dtype]
        pointers = dict(
            x_ptr=floats, source_ptr="*i64", block_expert_ptr="*i64", w_ptr=floats, out_ptr=floats
        )
        constants = dict(
            DOT=dot_dtype(dtype),
            PRECISION=dot_precision(dtype),
            BLOCK_M=triton_experts.BLOCK_M,
            BLOCK_N=triton_experts.BLOCK_N,
            BLOCK_K=triton_experts.BLOCK_K,
        )
        compile_kernel(triton_experts._grouped_matmul_kernel, pointers, constants, capability)


def quantized_matmul_kernels(capability: int) -> None:
    """The dequantizing product in bf16 (on tensor cores) for each layout (4 bits with
    offsets, 8 without and with) at the decode and the widest tile; float32 (exact "ieee"
    products, no tensor cores) at the widest."""
    matmul = triton_quantized_matmul
    variants = [
        (torch.bfloat16, bits, has_offsets, block_m)
        for bits, has_offsets in ((4, True), (8, False), (8, True))
        for block_m in (matmul.MIN_BLOCK_M, matmul.BLOCK_M)
    ]
    variants.append((torch.float32, 4, True, matmul.BLOCK_M))
    for dtype, bits, has_offsets, block_m in variants:
        floats = FLOAT_POINTERS[dtype]
        pointers = dict(
            x_ptr=floats,
            codes_ptr="*u8" if bits == 4 else "*i8",
            scales_ptr="*fp32",
            offsets_ptr="*fp32",
            out_ptr=floats,
        )
        constants = dict(
            BITS=bits,
            HAS_OFFSETS=has_offsets,
            DOT=dot_dtype(dtype),
            PRECISION=dot_precision(dtype),
            BLOCK_M=block_m,
            BLOCK_N=matmul.BLOCK_N,
            BLOCK_K=matmul.BLOCK_K,
        )
        compile_kernel(matmul._quantized_matmul_kernel, pointers, constants, capability)


def kda_kernel(capability: int) -> None:
    """KDA's recurrence at Kimi Linear's head size, from bf16 and float32 activations, with
    and without checkpoints."""
    for floats in ("*bf16", "*fp32"):
        pointers = dict(q_ptr=floats, k_ptr=floats, v_ptr=floats, beta_ptr=floats)
        pointers |= dict(g_ptr="*fp32", out_ptr="*fp32", states_ptr="*fp32", scale="fp32")
        pointers |= dict.fromkeys(
            ("slots_ptr", "query_start_loc_ptr", "context_lens_ptr", "checkpoints_ptr"), "*i64"
        )
        for checkpoints in (True, False):
            constants = dict(
                HAS_CHECKPOINTS=checkpoints, BLOCK_K=128, BLOCK_V=kda_recurrent.BLOCK_V
            )
            compile_kernel(kda_recurrent._recurrent_kda_kernel, pointers, constants, capability)


def main(capability: int) -> None:
    """Float8 e4m3 caches only where Triton has the type (8.9 on), as the backend chooses."""
    store_kernel("*i8", integer=True, capability=capability)
    decode_kernels("*bf16", torch.bfloat16, quantized=False, capability=capability)
    if capability >= 89:
        store_kernel("*fp8e4nv", integer=False, capability=capability)
        decode_kernels("*fp8e4nv", torch.float16, quantized=True, capability=capability)
    prefill_kernel("*bf16", torch.bfloat16, quantized=False, capability=capability)
    prefill_kernel("*i8", torch.bfloat16, quantized=True, capability=capability)
    sparse_prefill_kernel("*bf16", torch.bfloat16, quantized=False, capability=capability)
    sparse_prefill_kernel("*i8", torch.bfloat16, quantized=True, capability=capability)
    layer_op_kernels(capability)
    expert_kernel(capability)
    quantized_matmul_kernels(capability)
    kda_kernel(capability)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 90)
