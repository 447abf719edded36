"""Random weights in a model's shapes, for benchmarking models we cannot download."""

import zlib
from collections.abc import Iterator

import torch

from tome.models.config import ModelConfig

DEFAULT_INIT_STD = 0.02


def dummy_weights(
    config: ModelConfig, names_and_shapes: dict[str, tuple[int, ...]], seed: int = 0
) -> Iterator[tuple[str, torch.Tensor]]:
    """float32 weights: biases 0, norm weights 1, everything else normal(0, init std).

    The std is the model's own initializer_range (0.02 for every family we support)."""
    std = getattr(config.hf_config, "initializer_range", None) or DEFAULT_INIT_STD
    for name, shape in names_and_shapes.items():
        yield name, _dummy_tensor(name, shape, seed, std)


def _dummy_tensor(name: str, shape: tuple[int, ...], seed: int, std: float) -> torch.Tensor:
    if name.endswith(".bias"):
        return torch.zeros(shape)
    if "norm" in name:
        return torch.ones(shape)
    # Seeded per name, so a tensor's values do not depend on which others were asked for
    # (a 2-layer and a 32-layer benchmark share layer 0).
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{name}".encode()))
    return torch.empty(shape).normal_(0.0, std, generator=generator)
