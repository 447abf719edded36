"""RMSNorm, the rotary embedding and SiLU-and-multiply for float32 tensors on the CPU, each
one pass of cpu/layer_ops.cpp instead of a handful of torch ops. The layers call these
where `runs_on(x)` holds and their torch ops elsewhere; the tests hold the two equal."""

import ctypes

import torch

from tome.kernels.cpu_kernels import KernelSource, load_declared
from tome.kernels.token_rows import with_contiguous_heads

_pointer, _size = ctypes.c_void_p, ctypes.c_int64
KERNEL = KernelSource(
    "layer_ops",
    {
        "tome_rms_norm": (
            None,
            [_pointer, _size, _pointer, ctypes.c_float, _size, _size, _pointer],
        ),
        "tome_rotary": (None, [_pointer, _size, _size, _size, _size, _pointer, _pointer]),
        "tome_silu_and_mul": (None, [_pointer, _size, _size, _pointer]),
    },
)


def kernel_library() -> ctypes.CDLL | None:
    """The compiled kernels, their signatures declared; None where they cannot be built."""
    return load_declared(KERNEL)


def runs_on(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and kernel_library() is not None


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., dim] normalized over its last dimension and scaled by weight [dim]. With
    `residual`, x + residual is normalized instead and stored in `residual` (torch adds:
    one pass either way)."""
    if residual is not None:
        x = residual.add_(x)
    dim = x.shape[-1]
    rows = x.reshape(-1, dim)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape, dtype=torch.float32)
    kernel_library().tome_rms_norm(
        rows.data_ptr(), rows.stride(0), weight.data_ptr(), eps, rows.shape[0], dim, out.data_ptr()
    )
    return out.view(x.shape)


def rotate_in_place(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [tokens, heads, head_dim] (heads side by side in each token's row, as a view of a
    fused q/k projection has them) rotated in place and returned; cos and sin
    [tokens, 1, head_dim]."""
    x = with_contiguous_heads(x)
    cos, sin = cos.contiguous(), sin.contiguous()
    tokens, heads, head_dim = x.shape
    kernel_library().tome_rotary(
        x.data_ptr(), x.stride(0), tokens, heads, head_dim, cos.data_ptr(), sin.data_ptr()
    )
    return x


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up [..., 2 * width] holding gate then up."""
    width = gate_up.shape[-1] // 2
    rows = gate_up.reshape(-1, 2 * width).contiguous()
    out = torch.empty(rows.shape[0], width, dtype=torch.float32)
    kernel_library().tome_silu_and_mul(rows.data_ptr(), rows.shape[0], width, out.data_ptr())
    return out.view(*gate_up.shape[:-1], width)
