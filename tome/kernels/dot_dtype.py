"""The dtype a kernel's tl.dot operands take for a compute dtype."""

import os

import torch
import triton.language as tl

TRITON_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def dot_dtype(compute_dtype: torch.dtype) -> tl.dtype:
    """The compute dtype itself, for the tensor cores, except bfloat16 under Triton's CPU
    interpreter (TRITON_INTERPRET=1), which multiplies bfloat16 operands as their raw 16-bit
    patterns: there they go up to float32, and the rest of the kernel is tested as is."""
    if compute_dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1":
        return tl.float32
    return TRITON_DTYPES[compute_dtype]


def dot_precision(compute_dtype: torch.dtype) -> str | None:
    """float32 products computed exactly ("ieee"), as torch does, not rounded to TF32;
    other dtypes take tl.dot's default."""
    return "ieee" if dot_dtype(compute_dtype) == tl.float32 else None
