"""Converted GGUF metadata, cached on disk.

transformers rebuilds a config and a fast tokenizer from a GGUF file by parsing its whole
vocabulary, once for each (about 9 s for the embedded model on two cores). We do that once
per file and keep the result as an ordinary config + tokenizer folder, keyed by the file's
path, size and modification time, so later loads read JSON instead."""

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from tome.loader.gguf_config import gguf_config, gguf_tokenizer
from tome.loader.gguf_weights import open_gguf

CACHE_ENV = "TOME_CACHE_DIR"
READY_MARKER = "complete"
# Part of the cache key: a change in what a conversion holds invalidates older folders.
CONVERSION_VERSION = 3


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tome")


def converted_metadata_dir(gguf_path: Path) -> Path:
    """A folder with config.json and tokenizer files equivalent to the GGUF's metadata."""
    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{CONVERSION_VERSION}"
    key = key.encode()
    target = cache_root() / "gguf" / hashlib.blake2b(key, digest_size=12).hexdigest()
    if (target / READY_MARKER).is_file():
        return target
    reader = open_gguf(gguf_path)
    config = gguf_config(gguf_path, reader)
    tokenizer = gguf_tokenizer(gguf_path, reader)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so a concurrent or interrupted load never
    # sees half a folder.
    staging = Path(tempfile.mkdtemp(dir=target.parent))
    config.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / READY_MARKER).write_text(gguf_path.name)
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target
