"""bfloat16 products for decode steps on the CPU, with the C++ kernel of
cpu/bfloat16_matmul.cpp: weights widened in registers, float32 sums, outputs rounded once
to bfloat16. Its reference in the tests is the float64 product of the same values."""

import ctypes

import torch

from tome.kernels.cpu_kernels import KernelSource, load_declared

_pointer, _size = ctypes.c_void_p, ctypes.c_int64
KERNEL = KernelSource(
    "bfloat16_matmul",
    {"tome_bfloat16_matmul": (None, [_pointer, _size, _size, _pointer, _size, _pointer])},
    # Its sums may be reordered; its rounding to bfloat16 is integer arithmetic.
)
# Rows up to which the kernel runs (decode steps); more rows (prefill chunks) take torch's
# product, which reuses each weight across many rows.
MAX_ROWS = 32


def kernel_library() -> ctypes.CDLL | None:
    return load_declared(KERNEL)


def runs_on(x: torch.Tensor) -> bool:
    """Whether the kernel serves x: bfloat16 on the CPU, few rows, the kernel built."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and x.numel() // x.shape[-1] <= MAX_ROWS
        and kernel_library() is not None
    )


def bfloat16_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., k] @ weight [n, k]^T, both bfloat16 on the CPU: [..., n] bfloat16."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    weight = weight.contiguous()
    out = torch.empty(rows.shape[0], weight.shape[0], dtype=torch.bfloat16)
    kernel_library().tome_bfloat16_matmul(
        rows.data_ptr(), rows.shape[0], rows.shape[1], weight.data_ptr(), weight.shape[0],
        out.data_ptr(),
    )  # fmt: skip
    return out.view(*x.shape[:-1], weight.shape[0])
