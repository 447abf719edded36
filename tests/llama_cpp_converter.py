"""llama.cpp's own converter (convert_hf_to_gguf.py), so the GGUF files the MoE tests load
are llama.cpp's writing of the format, not only our reading of it. It ships in the
llama-cpp-python source package (vendor/llama.cpp): the first use downloads that package
with pip (no build) and keeps the converter, its `conversion` package and its gguf-py in
a cache folder for later runs."""

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "llama-cpp-python==0.3.36"
SOURCE_DIR = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
KEPT = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def converter_dir() -> Path:
    """The folder holding convert_hf_to_gguf.py, fetched on first use."""
    root = Path(os.environ.get("TOME_CACHE_DIR") or Path.home() / ".cache" / "tome")
    target = root / "llama.cpp-converter-0.3.36"
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "--no-binary",
             ":all:", "--quiet", "-d", download],
            check=True,
        )  # fmt: skip
        staging = Path(tempfile.mkdtemp(dir=root if root.is_dir() else None))
        with tarfile.open(next(Path(download).glob("*.tar.gz"))) as archive:
            members = [m for m in archive.getmembers() if _kept(m.name)]
            for member in members:
                member.name = member.name.removeprefix(SOURCE_DIR)
            archive.extractall(staging, members=members, filter="data")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    return target


def _kept(name: str) -> bool:
    return name.startswith(SOURCE_DIR) and name.removeprefix(SOURCE_DIR).startswith(KEPT)


def convert(hf_dir: Path, out: Path, outtype: str = "f32") -> Path:
    """hf_dir converted by llama.cpp to a GGUF file at `out` (outtype f32, f16, bf16, q8_0)."""
    tools = converter_dir()
    env = {**os.environ, "PYTHONPATH": str(tools / "gguf-py")}
    subprocess.run(
        [sys.executable, str(tools / "convert_hf_to_gguf.py"), str(hf_dir), "--outfile",
         str(out), "--outtype", outtype],
        check=True, env=env, capture_output=True,
    )  # fmt: skip
    return out
