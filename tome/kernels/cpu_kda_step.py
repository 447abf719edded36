"""Kimi Delta Attention's decode step on the CPU as one pass of cpu/kda_step.cpp over each
sequence's state, in place in the layer's state pool, instead of the torch step's gather,
five passes and scatter. The layer calls it where `runs_on(x)` holds and
kda_ops.recurrent_kda_step elsewhere; the tests hold the two equal."""

import ctypes

import torch

from tome.kernels.cpu_kernels import KernelSource, load_declared
from tome.kernels.token_rows import with_contiguous_heads

MAX_DIM = 256  # the kernel's bound on k_dim and v_dim (Kimi Linear's are 128)

_pointer, _size = ctypes.c_void_p, ctypes.c_int64
KERNEL = KernelSource(
    "kda_step",
    {
        "tome_kda_step": (
            None,
            [_pointer] * 3
            + [_size] * 3
            + [_pointer] * 4
            + [_size] * 4
            + [ctypes.c_float]
            + [_pointer],
        ),
    },
)


def kernel_library() -> ctypes.CDLL | None:
    """The compiled kernel, its signature declared; None where it cannot be built."""
    return load_declared(KERNEL)


def runs_on(x: torch.Tensor, states: torch.Tensor) -> bool:
    """Whether the kernel serves q/k/v like x against the state pool `states`."""
    return (
        x.device.type == "cpu"
        and states.dtype == torch.float32
        and states.is_contiguous()
        and max(states.shape[-2:]) <= MAX_DIM
        and kernel_library() is not None
    )


def kda_step_in_place(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    states: torch.Tensor,
    slots: torch.Tensor,
) -> torch.Tensor:
    """One token of each of a batch of sequences. q, k, g [seqs, heads, k_dim] (q and k not
    yet normalised); v [seqs, heads, v_dim]; beta [seqs, heads]; states [slots, heads,
    k_dim, v_dim] float32, contiguous, updated in place at slots [seqs]. Returns the
    outputs [seqs, heads, v_dim], float32."""
    q, k, v = (with_contiguous_heads(x.float()) for x in (q, k, v))
    g, beta = g.float().contiguous(), beta.float().contiguous()
    slots = slots.to(torch.int64).contiguous()
    seqs, heads, k_dim = k.shape
    v_dim = v.shape[-1]
    out = torch.empty(seqs, heads, v_dim, dtype=torch.float32)
    kernel_library().tome_kda_step(
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        q.stride(0),
        k.stride(0),
        v.stride(0),
        g.data_ptr(),
        beta.data_ptr(),
        states.data_ptr(),
        slots.data_ptr(),
        seqs,
        heads,
        k_dim,
        v_dim,
        k_dim**-0.5,
        out.data_ptr(),
    )
    return out
