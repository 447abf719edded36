"""RMSNorm (with the residual add fused in), the rotary embedding and SiLU-and-multiply as
one Triton launch each, for the GPU. In torch they are five to eight launches apiece; at
decode a launch costs more than the arithmetic, and a Llama-8B step would pay some 600
of them in these ops alone.

Each kernel rounds where the torch ops it replaces round: values are computed in float32
and brought to the tensor's dtype after every op the reference does in that dtype, so a
bfloat16 result differs from torch's only where float32 arithmetic itself is ordered
differently (the sum of squares, a fused multiply-add)."""

import torch
import triton
import triton.language as tl

from tome.kernels.token_rows import with_contiguous_heads


@triton.jit
def rounded(x, dtype: tl.constexpr):
    """x (float32) in `dtype`, to nearest, ties to even. For bfloat16 the rounding is done on
    the bits first: Triton's interpreter truncates in that cast where GPUs round, and a
    value already on the bfloat16 grid casts exactly either way."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _rms_norm_kernel(
    x_ptr,  # [rows, dim], rows stride_x apart
    stride_x,
    residual_ptr,  # [rows, dim] contiguous, updated in place to x + residual, when ADD
    weight_ptr,  # [dim]
    out_ptr,  # [rows, dim] contiguous
    dim,
    eps,
    ADD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < dim
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if ADD:
        # The sum in the tensor's dtype, as torch's `x + residual` leaves it.
        x = x.to(tl.float32) + tl.load(residual_ptr + row * dim + cols, mask=mask).to(tl.float32)
        x = rounded(x, residual_ptr.dtype.element_ty)
        tl.store(residual_ptr + row * dim + cols, x, mask=mask)
    x32 = x.to(tl.float32)
    inverse = 1.0 / tl.sqrt(tl.sum(x32 * x32, axis=0) / dim + eps)
    normed = rounded(x32 * inverse, x_ptr.dtype.element_ty).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=mask).to(tl.float32)
    out = rounded(weight * normed, out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * dim + cols, out, mask=mask)


@triton.jit
def _rotary_kernel(
    x_ptr,  # [tokens, heads, head_dim], tokens stride_token apart, heads contiguous
    stride_token,
    cos_ptr,  # [tokens, head_dim] contiguous
    sin_ptr,
    heads,
    half,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    """One token: x * cos + rotate_half(x) * sin for every head, in place."""
    token = tl.program_id(0).to(tl.int64)
    head = tl.arange(0, BLOCK_H)[:, None]
    col = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (head < heads) & (col < half)
    first_ptr = x_ptr + token * stride_token + head * (2 * half) + col
    dtype = x_ptr.dtype.element_ty
    first = tl.load(first_ptr, mask=mask).to(tl.float32)
    second = tl.load(first_ptr + half, mask=mask).to(tl.float32)
    trig = token * 2 * half + col
    cos_first = tl.load(cos_ptr + trig, mask=col < half).to(tl.float32)
    cos_second = tl.load(cos_ptr + trig + half, mask=col < half).to(tl.float32)
    sin_first = tl.load(sin_ptr + trig, mask=col < half).to(tl.float32)
    sin_second = tl.load(sin_ptr + trig + half, mask=col < half).to(tl.float32)
    # Each product rounded to the dtype before the sum, as torch's three ops round.
    new_first = rounded(first * cos_first, dtype).to(tl.float32) + rounded(
        -second * sin_first, dtype
    ).to(tl.float32)
    new_second = rounded(second * cos_second, dtype).to(tl.float32) + rounded(
        first * sin_second, dtype
    ).to(tl.float32)
    tl.store(first_ptr, rounded(new_first, dtype), mask=mask)
    tl.store(first_ptr + half, rounded(new_second, dtype), mask=mask)


@triton.jit
def _silu_and_mul_kernel(
    gate_up_ptr,  # [rows, 2 * width] contiguous: gate then up
    out_ptr,  # [rows, width]
    width,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    gate = tl.load(gate_up_ptr + row * 2 * width + cols, mask=mask).to(tl.float32)
    up = tl.load(gate_up_ptr + row * 2 * width + width + cols, mask=mask).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    silu = rounded(gate / (1.0 + tl.exp(-gate)), dtype).to(tl.float32)
    tl.store(out_ptr + row * width + cols, rounded(silu * up, dtype), mask=mask)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., dim] normalized over its last dimension and scaled by weight [dim], in the
    dtype torch's `weight * normed.to(x.dtype)` has. With `residual` (contiguous, x's
    shape and dtype), x + residual is normalized instead and stored in `residual`."""
    dim = x.shape[-1]
    rows = x.reshape(-1, dim)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape, dtype=torch.result_type(weight, x), device=x.device)
    if rows.shape[0]:
        _rms_norm_kernel[(rows.shape[0],)](
            rows,
            rows.stride(0),
            residual if residual is not None else rows,
            weight,
            out,
            dim,
            eps,
            ADD=residual is not None,
            BLOCK=triton.next_power_of_2(dim),
        )
    return out.view(x.shape)


def rotate_in_place(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [tokens, heads, head_dim] (heads contiguous in each token's row) rotated in place
    and returned; cos and sin [tokens, 1, head_dim] in x's dtype."""
    x = with_contiguous_heads(x)
    tokens, heads, head_dim = x.shape
    if tokens:
        _rotary_kernel[(tokens,)](
            x,
            x.stride(0),
            cos.contiguous(),
            sin.contiguous(),
            heads,
            head_dim // 2,
            BLOCK_H=triton.next_power_of_2(heads),
            BLOCK_HALF=triton.next_power_of_2(head_dim // 2),
            # x * cos + rotated * sin as two products and a sum, as torch's ops round them:
            # float32 must not become a fused multiply-add.
            enable_fp_fusion=False,
        )
    return x


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up [..., 2 * width] holding gate then up."""
    width = gate_up.shape[-1] // 2
    rows = gate_up.reshape(-1, 2 * width).contiguous()
    out = torch.empty(rows.shape[0], width, dtype=gate_up.dtype, device=gate_up.device)
    block = min(1024, triton.next_power_of_2(width))
    if rows.shape[0]:
        _silu_and_mul_kernel[(rows.shape[0], triton.cdiv(width, block))](
            rows, out, width, BLOCK=block
        )
    return out.view(*gate_up.shape[:-1], width)
