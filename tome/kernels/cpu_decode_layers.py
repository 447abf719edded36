"""A decode step's pass through a stack of Llama-family layers in one call of
cpu/decode_layers.cpp, which runs each layer's kernels (the block-quantized products, the
layer ops, the K/V store, the paged decode attention) in the order the Python layers call
them. The structures below mirror that file's; a caller fills one DecodeLayer per layer
once and one DecodeStep per step."""

import ctypes

from tome.kernels import block_quantized_matmul, cpu_decode_attention, cpu_kv_store, cpu_layer_ops
from tome.kernels.cpu_kernels import KernelSource, load_declared

_pointer, _size, _int, _float = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float


class DecodeKernels(ctypes.Structure):
    _fields_ = [
        (name, _pointer)
        for name in ("matmul", "rms_norm", "rotary", "silu_and_mul", "store_kv", "attention")
    ]


class DecodeLinear(ctypes.Structure):
    _fields_ = [
        *[(name, _pointer) for name in ("codes", "scales", "offsets", "bias")],
        ("n", _size),
        ("k", _size),
        ("kind", _int),
        ("activations", _int),
    ]


class DecodeLayer(ctypes.Structure):
    _fields_ = [
        *[(name, _pointer) for name in ("input_norm", "post_attention_norm", "q_norm", "k_norm")],
        ("norm_eps", _float),
        ("attention_scale", _float),
        *[(name, DecodeLinear) for name in ("qkv", "o", "gate_up", "down")],
        *[(name, _int) for name in ("heads", "kv_heads", "head_dim", "block_size", "cache_kind")],
        ("k_cache", _pointer),
        ("v_cache", _pointer),
    ]


class DecodeStep(ctypes.Structure):
    _fields_ = [
        ("tokens", _size),
        *[(name, _pointer) for name in ("residual", "x", "cos", "sin", "slots", "block_tables")],
        ("table_stride", _size),
        ("context_lens", _pointer),
        ("split_blocks", _int),
        *[
            (name, _pointer)
            for name in (
                "h",
                "qkv",
                "q",
                "k",
                "attention",
                "gate_up",
                "activated",
            )
        ],
    ]


KERNEL = KernelSource(
    "decode_layers",
    {
        "tome_decode_layers": (
            ctypes.c_int,
            [ctypes.POINTER(DecodeKernels), ctypes.POINTER(DecodeLayer), _size, _pointer],
        )
    },
    # It only moves rows and adds: the kernels it calls keep their own builds' rounding.
    fast_math=False,
)


def kernel_library() -> ctypes.CDLL | None:
    return load_declared(KERNEL)


def entry_points() -> DecodeKernels | None:
    """The kernels a layer runs, as function pointers; None where any of them (or this
    file) cannot be built."""
    libraries = [
        kernel_library(),
        block_quantized_matmul.kernel_library(),
        cpu_layer_ops.kernel_library(),
        cpu_kv_store.kernel_library(),
        cpu_decode_attention.kernel_library(),
    ]
    if any(library is None for library in libraries):
        return None
    _, matmul, layer_ops, kv_store, attention = libraries
    functions = [
        matmul.tome_block_quantized_matmul,
        layer_ops.tome_rms_norm,
        layer_ops.tome_rotary,
        layer_ops.tome_silu_and_mul,
        kv_store.tome_store_kv,
        attention.tome_paged_decode_attention,
    ]
    return DecodeKernels(*[ctypes.cast(f, _pointer).value for f in functions])


def run_decode_layers(kernels: DecodeKernels, layers: ctypes.Array, step: DecodeStep) -> None:
    """Every layer of `layers` over the step; raises if a kernel refused its operands."""
    status = kernel_library().tome_decode_layers(
        ctypes.byref(kernels), layers, len(layers), ctypes.addressof(step)
    )
    if status != 0:
        raise RuntimeError(f"a decode layer's kernel returned status {status}")
