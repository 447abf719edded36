"""The C++ kernels of tome/kernels/cpu: compiled on first use by the machine's C++ compiler
for its own vector instructions, kept in a cache folder, and loaded through ctypes.

A Python package cannot ship one binary for every CPU, and a build step at install time
would make a compiler a requirement of `pip install`. So the first process that needs a
kernel builds it (a second or two) and later ones load the cached library. Where no
compiler works, `load` logs why once and returns None, and the torch ops serve instead."""

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

logger = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent / "cpu"
CACHE_ENV = "TOME_KERNEL_CACHE"
# -march=native: the library is built on, and cached for, the CPU it runs on. -fopenmp: the
# loops run on the OpenMP runtime torch has loaded (same soname, so the loader shares it).
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-std=c++17", "-shared", "-fPIC")
# On x86, GCC vectorizes loops 256 bits wide even where the CPU has AVX-512, which halved
# the decode attention's arithmetic rate; where it has not, the option changes nothing.
X86_FLAGS = ("-mprefer-vector-width=512",)


# A C function's result type and argument types, as ctypes declares them.
Signature = tuple[type | None, list[type]]


class KernelBuildError(RuntimeError):
    """A CPU kernel could not be compiled or loaded."""


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tome" / "kernels"
    return Path(os.environ.get(CACHE_ENV, default))


@cache
def load(name: str) -> ctypes.CDLL | None:
    """The library built from cpu/<name>.cpp, or None (logged once) where it cannot be."""
    try:
        return ctypes.CDLL(str(build(name)))
    except (KernelBuildError, OSError) as exc:
        logger.warning("CPU kernel %s unavailable, using torch ops instead: %s", name, exc)
        return None


def load_declared(name: str, signatures: dict[str, Signature]) -> ctypes.CDLL | None:
    """load(name) with the signatures of its functions declared, or None."""
    library = load(name)
    if library is not None:
        for function, (result, arguments) in signatures.items():
            getattr(library, function).restype = result
            getattr(library, function).argtypes = arguments
    return library


def build(name: str) -> Path:
    """The compiled library's path, compiling it unless this source, compiler and CPU have
    been built for before. Raises KernelBuildError with the compiler's message."""
    source = SOURCE_DIR / f"{name}.cpp"
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise KernelBuildError("no C++ compiler found (install g++ or set CXX)")
    target = cache_dir() / f"{name}-{_build_key(source, compiler)}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("compiling the CPU kernel %s (once for this machine, about 20 s)", name)
    # Built beside the target and renamed into place, so that processes building at the
    # same moment never load a half-written file.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        try:
            result = subprocess.run(
                [compiler, *_flags(), str(source), "-o", str(built)],
                capture_output=True,
                text=True,
                timeout=300,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KernelBuildError(f"{compiler} failed to run: {exc}") from exc
        if result.returncode != 0:
            first_error = (result.stderr.strip().splitlines() or ["no message"])[0]
            raise KernelBuildError(f"{compiler} could not compile {source.name}: {first_error}")
        os.replace(built, target)
    return target


def _build_key(source: Path, compiler: str) -> str:
    """What the library depends on: the source, the flags, the compiler's version and the
    CPU's features (-march=native builds for them)."""
    digest = hashlib.sha256(source.read_bytes())
    digest.update(" ".join(_flags()).encode())
    digest.update(_compiler_version(compiler).encode())
    digest.update(_cpu_features().encode())
    return digest.hexdigest()[:16]


def _flags() -> tuple[str, ...]:
    return FLAGS + X86_FLAGS if platform.machine().lower() in ("x86_64", "amd64") else FLAGS


def _compiler_version(compiler: str) -> str:
    try:
        return subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelBuildError(f"{compiler} failed to run: {exc}") from exc


def _cpu_features() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    return platform.machine() + platform.processor()
