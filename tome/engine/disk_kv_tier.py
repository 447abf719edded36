"""DiskKVTier: cached prefix blocks as files under a directory, bounded in bytes.

One file per block, named by its chain hash, in a folder named by a fingerprint of the
model and the KV layout: blocks outlive the engine and load again after a restart with the
same model, while another model (or dtype, or block size) never sees them. Files are
safetensors rather than torch.save: loading one runs no pickle (the folder may be shared),
every KV dtype (int8, float8) is supported, and a damaged file fails its header check
instead of loading garbage. Least recently used files go first; a file's modification time
is its recency, so the order survives a restart."""

import hashlib
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Collection
from contextlib import suppress
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError

from tome.errors import InvalidRequestError
from tome.loader.model_source import ModelSource

logger = logging.getLogger(__name__)

SUFFIX = ".safetensors"


def kv_fingerprint(source: ModelSource, numerics: str, like: list[torch.Tensor]) -> str:
    """Names the KV a model makes. Its files by path, size and modification time (a
    rewritten or replaced file is another model), what else changes the numbers (`numerics`:
    dtype, load format), and the pool layout (block size, heads, KV dtype, scale tensors)."""
    digest = hashlib.blake2b(digest_size=12)
    for path in _model_files(source):
        stat = path.stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    digest.update(numerics.encode())
    for t in like:
        digest.update(f"{tuple(t.shape[1:])}|{t.dtype}\n".encode())
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", source.name)
    return f"{readable}-{digest.hexdigest()}"


def _model_files(source: ModelSource) -> list[Path]:
    if source.kind == "gguf":
        return [source.path]
    return [source.path / "config.json", *sorted(source.path.glob("*.safetensors"))]


class DiskKVTier:
    def __init__(self, directory: Path, capacity_bytes: int, like: list[torch.Tensor]) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidRequestError(
                f"disk_kv_cache_dir: cannot create {directory}: {exc.strerror}"
            ) from exc
        self.directory = directory
        self.capacity_bytes = capacity_bytes
        self._layout = [(t.shape[1:], t.dtype) for t in like]
        self._sizes: OrderedDict[bytes, int] = OrderedDict()  # least recently used first
        self.used_bytes = 0
        self._scan()

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def touch(self, block_hash: bytes) -> None:
        self._sizes.move_to_end(block_hash)
        with suppress(OSError):
            os.utime(self._path(block_hash))

    def save(self, block_hash: bytes, rows: list[torch.Tensor], keep: Collection[bytes]) -> bool:
        """Write a block, making room by removing least recently used files not in `keep`.
        False when there is no room or the disk refuses: a cache may lose a block, and the
        engine must not stop for it."""
        data = safetensors.torch.save({str(i): row.contiguous() for i, row in enumerate(rows)})
        if not self._make_room(len(data), keep):
            return False
        path = self._path(block_hash)
        partial = path.with_suffix(".partial")
        try:
            partial.write_bytes(data)
            os.replace(partial, path)  # a crash mid-write leaves no half block under the name
        except OSError as exc:
            logger.warning("KV disk tier: could not write %s: %s", path, exc.strerror)
            partial.unlink(missing_ok=True)
            return False
        self._sizes[block_hash] = len(data)
        self.used_bytes += len(data)
        return True

    def load(self, block_hash: bytes) -> list[torch.Tensor] | None:
        """The block's tensors, or None (and the file forgotten) when it is gone, damaged,
        or not of this pool's layout."""
        path = self._path(block_hash)
        try:
            stored = safetensors.torch.load_file(path)
        except (OSError, SafetensorError) as exc:
            logger.warning("KV disk tier: could not read %s: %s", path, exc)
            self._forget(block_hash)
            return None
        rows = [stored.get(str(i)) for i in range(len(self._layout))]
        fits = len(stored) == len(self._layout) and all(
            row is not None and row.shape == shape and row.dtype == dtype
            for row, (shape, dtype) in zip(rows, self._layout, strict=True)
        )
        if not fits:
            logger.warning("KV disk tier: %s does not match the KV layout", path)
            self._forget(block_hash)
            return None
        self.touch(block_hash)
        return rows

    def _scan(self) -> None:
        """Index the blocks a previous engine left, oldest first, within the bound."""
        for partial in self.directory.glob("*.partial"):
            partial.unlink(missing_ok=True)
        found = []
        for path in self.directory.glob("*" + SUFFIX):
            with suppress(ValueError, OSError):
                stat = path.stat()
                found.append((stat.st_mtime_ns, bytes.fromhex(path.stem), stat.st_size))
        for _, block_hash, size in sorted(found):
            self._sizes[block_hash] = size
            self.used_bytes += size
        self._make_room(0, keep=())

    def _make_room(self, num_bytes: int, keep: Collection[bytes]) -> bool:
        if num_bytes > self.capacity_bytes:
            return False
        while self.used_bytes + num_bytes > self.capacity_bytes:
            victim = next((h for h in self._sizes if h not in keep), None)
            if victim is None:
                return False
            self._forget(victim)
        return True

    def _forget(self, block_hash: bytes) -> None:
        self.used_bytes -= self._sizes.pop(block_hash)
        with suppress(OSError):
            self._path(block_hash).unlink(missing_ok=True)

    def _path(self, block_hash: bytes) -> Path:
        return self.directory / (block_hash.hex() + SUFFIX)
