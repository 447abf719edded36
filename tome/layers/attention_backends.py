"""Which attention backend runs on a device: Triton kernels on CUDA when Triton is
installed, the C++ decode kernel on the CPU when it builds there, torch ops everywhere
else. TOME_ATTENTION_BACKEND overrides the choice: `triton` runs the Triton kernels even on
the CPU (under TRITON_INTERPRET=1, as the tests do), `cpu` insists on the C++ kernel,
`torch` keeps torch ops everywhere."""

import importlib.util
import os
from typing import Protocol

import torch

from tome.errors import InvalidRequestError
from tome.kernels.cpu_decode_attention import supports, unsupported_reason
from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.cpu_attention_backend import CpuAttentionBackend
from tome.layers.layer_kv_cache import LayerKVCache
from tome.layers.torch_attention_backend import TorchAttentionBackend

BACKEND_ENV = "TOME_ATTENTION_BACKEND"
BACKEND_CHOICES = ("auto", "torch", "triton", "cpu")


class AttentionBackend(Protocol):
    graph_safe: bool  # whether a CUDA graph can record its decodes

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cache: LayerKVCache,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor: ...


def backend_for(device: torch.device, kv_dtype: torch.dtype) -> AttentionBackend:
    """The backend for a KV cache of `kv_dtype` on `device`, unless TOME_ATTENTION_BACKEND
    names one."""
    choice = os.environ.get(BACKEND_ENV, "auto")
    if choice not in BACKEND_CHOICES:
        raise InvalidRequestError(f"{BACKEND_ENV} must be one of {', '.join(BACKEND_CHOICES)}")
    if choice == "triton" or (choice == "auto" and _triton_runs(device, kv_dtype)):
        # Imported only when chosen: Triton is an optional dependency.
        from tome.layers.triton_attention_backend import TritonAttentionBackend

        return TritonAttentionBackend()
    if choice == "cpu" or (choice == "auto" and supports(device, kv_dtype)):
        return _cpu_backend(device, kv_dtype)
    return TorchAttentionBackend()


def _cpu_backend(device: torch.device, kv_dtype: torch.dtype) -> AttentionBackend:
    reason = unsupported_reason(device, kv_dtype)
    if reason is not None:
        raise InvalidRequestError(f"{BACKEND_ENV}=cpu: the C++ decode kernel cannot run: {reason}")
    return CpuAttentionBackend()


def _triton_runs(device: torch.device, kv_dtype: torch.dtype) -> bool:
    """On CUDA with Triton installed; Triton has float8 e4m3 only from compute capability
    8.9 (Ada, Hopper) on, where torch still reads it on older GPUs."""
    if device.type != "cuda" or importlib.util.find_spec("triton") is None:
        return False
    return kv_dtype != torch.float8_e4m3fn or torch.cuda.get_device_capability(device) >= (8, 9)
