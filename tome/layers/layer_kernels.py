"""Which kernels run a layer's small ops (RMSNorm, the rotary embedding, SiLU-and-multiply)
on a tensor: the Triton ones on CUDA where Triton is installed, the C++ ones for float32
on the CPU where they build, else none (the layer's own torch ops). The MoE experts and
KDA's recurrence choose theirs by the same rule (uses_triton, uses_cpu_kernels).
TOME_LAYER_OPS overrides the choice: `triton` runs the Triton kernels even on the CPU
(under TRITON_INTERPRET=1, as the tests do), `torch` keeps torch ops everywhere."""

import importlib.util
import os
from functools import cache
from types import ModuleType

import torch

from tome.errors import InvalidRequestError
from tome.kernels import cpu_layer_ops

LAYER_OPS_ENV = "TOME_LAYER_OPS"
LAYER_OPS_CHOICES = ("auto", "triton", "torch")


def layer_kernels(x: torch.Tensor) -> ModuleType | None:
    """The module whose rms_norm, rotate_in_place and silu_and_mul serve x, or None."""
    choice = _choice()  # read once: a decode step asks hundreds of times
    if _triton_chosen(choice, x):
        # Imported only when chosen: Triton is an optional dependency.
        from tome.kernels import triton_layer_ops

        return triton_layer_ops
    if choice == "auto" and cpu_layer_ops.runs_on(x):
        return cpu_layer_ops
    return None


def uses_triton(x: torch.Tensor) -> bool:
    """Whether x's layer ops (and a MoE layer's experts) run as Triton kernels."""
    return _triton_chosen(_choice(), x)


def uses_cpu_kernels(x: torch.Tensor) -> bool:
    """Whether x's ops may take a C++ kernel (where it builds and serves x): on the CPU,
    unless TOME_LAYER_OPS asks for Triton or torch ops."""
    return _choice() == "auto" and x.device.type == "cpu"


def _triton_chosen(choice: str, x: torch.Tensor) -> bool:
    return choice == "triton" or (choice == "auto" and x.is_cuda and _has_triton())


def _choice() -> str:
    choice = os.environ.get(LAYER_OPS_ENV, "auto")
    if choice not in LAYER_OPS_CHOICES:
        raise InvalidRequestError(f"{LAYER_OPS_ENV} must be one of {', '.join(LAYER_OPS_CHOICES)}")
    return choice


@cache
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None
