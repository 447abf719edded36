"""Which attention backend runs on a device: Triton kernels on CUDA when Triton is
installed, torch ops everywhere else. TOME_ATTENTION_BACKEND overrides the choice: `triton`
runs the kernels even on the CPU (under TRITON_INTERPRET=1, as the tests do), `torch` keeps
torch ops on the GPU."""

import importlib.util
import os
from typing import Protocol

import torch

from tome.errors import InvalidRequestError
from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.layer_kv_cache import LayerKVCache
from tome.layers.torch_attention_backend import TorchAttentionBackend

BACKEND_ENV = "TOME_ATTENTION_BACKEND"
BACKEND_CHOICES = ("auto", "torch", "triton")


class AttentionBackend(Protocol):
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
    return TorchAttentionBackend()


def _triton_runs(device: torch.device, kv_dtype: torch.dtype) -> bool:
    """On CUDA with Triton installed; Triton has float8 e4m3 only from compute capability
    8.9 (Ada, Hopper) on, where torch still reads it on older GPUs."""
    if device.type != "cuda" or importlib.util.find_spec("triton") is None:
        return False
    return kv_dtype != torch.float8_e4m3fn or torch.cuda.get_device_capability(device) >= (8, 9)
