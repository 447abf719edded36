"""The C++ kernels of tome/kernels/cpu: compiled on first use by the machine's C++ compiler
for its own vector instructions, kept in a cache folder, and loaded through ctypes.

A Python package cannot ship one binary for every CPU, and a build step at install time
would make a compiler a requirement of `pip install`. So the first process that needs a
kernel builds it (a second or two) for the instruction set cpu_isa selects, and later ones
load the cached library. Where no compiler works, `load` logs why once and returns None,
and the torch ops serve instead."""

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from tome.kernels import cpu_isa

logger = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent / "cpu"
CACHE_ENV = "TOME_KERNEL_CACHE"
# -fopenmp: the loops run on the OpenMP runtime torch has loaded (same soname, so the loader
# shares it). The instruction set's own flags come from cpu_isa.
FLAGS = ("-O3", "-fopenmp", "-std=c++17", "-shared", "-fPIC")
# For kernels whose sums may be reordered. A kernel that must round as torch does is built
# without it: under -ffast-math GCC still multiplied by a reciprocal where a function's own
# `optimize("no-reciprocal-math")` forbade it, one int8 code in 10^5 off torch's division.
FAST_MATH = ("-ffast-math",)
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


@dataclass(frozen=True)
class KernelSource:
    """One library of cpu/: its file's stem, the C functions it exports, and whether its
    arithmetic may be reordered (-ffast-math)."""

    name: str
    signatures: dict[str, Signature] = field(hash=False, compare=False)
    fast_math: bool = True


@cache
def load_declared(kernel: KernelSource) -> ctypes.CDLL | None:
    """The kernel built for the selected instruction set, its functions' signatures
    declared, or None (logged once per instruction set) where it cannot be built. The
    instruction set is read once: layers ask for their kernel on every call (a decode
    step, a thousand times), and reading TOME_CPU_ISA each time took 1.5 us of them."""
    return _load(kernel, cpu_isa.selected())


def forget_loaded() -> None:
    """Load every kernel afresh on next use (after the compiler, the cache folder or
    TOME_CPU_ISA changed)."""
    load_declared.cache_clear()
    _load.cache_clear()


@cache
def _load(kernel: KernelSource, isa: cpu_isa.InstructionSet) -> ctypes.CDLL | None:
    try:
        library = ctypes.CDLL(str(build(kernel.name, isa, kernel.fast_math)))
    except (KernelBuildError, OSError) as exc:
        logger.warning("CPU kernel %s unavailable, using torch ops instead: %s", kernel.name, exc)
        return None
    for function, (result, arguments) in kernel.signatures.items():
        getattr(library, function).restype = result
        getattr(library, function).argtypes = arguments
    return library


def build(name: str, isa: cpu_isa.InstructionSet | None = None, fast_math: bool = True) -> Path:
    """The compiled library's path, compiling it unless this source, compiler, instruction
    set and CPU have been built for before. Raises KernelBuildError with the compiler's
    message."""
    source = SOURCE_DIR / f"{name}.cpp"
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise KernelBuildError("no C++ compiler found (install g++ or set CXX)")
    flags = _flags(isa or cpu_isa.selected(), fast_math)
    target = cache_dir() / f"{name}-{_build_key(source, compiler, flags)}.so"
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
                [compiler, *flags, str(source), "-o", str(built)],
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


def _build_key(source: Path, compiler: str, flags: tuple[str, ...]) -> str:
    """What the library depends on: the source, the flags, the compiler's version and the
    CPU's features (the native variant builds for them)."""
    digest = hashlib.sha256(source.read_bytes())
    digest.update(" ".join(flags).encode())
    digest.update(_compiler_version(compiler).encode())
    digest.update(" ".join(sorted(cpu_isa.cpu_flags())).encode())
    return digest.hexdigest()[:16]


def _flags(isa: cpu_isa.InstructionSet, fast_math: bool) -> tuple[str, ...]:
    flags = FLAGS + isa.flags + (FAST_MATH if fast_math else ())
    return flags + X86_FLAGS if cpu_isa.is_x86() else flags


def _compiler_version(compiler: str) -> str:
    try:
        return subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelBuildError(f"{compiler} failed to run: {exc}") from exc
