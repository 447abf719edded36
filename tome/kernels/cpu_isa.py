"""The instruction sets Tome's C++ kernels are built for on x86: each a fixed set of compiler
flags, so a kernel's code depends on the variant chosen, not on which CPU happened to build
it, and every variant a machine can run can be built and tested there.

By default a kernel is built for the widest variant the CPU runs; TOME_CPU_ISA names
another (the tests build each one the machine has). On other architectures there is one
variant, the compiler's native target."""

import os
import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tome.errors import InvalidRequestError

ISA_ENV = "TOME_CPU_ISA"


@dataclass(frozen=True)
class InstructionSet:
    name: str
    flags: tuple[str, ...]  # what the compiler is told to build for
    needs: frozenset[str]  # the /proc/cpuinfo flags a CPU must have to run the build


# x86-64-v3 is Haswell's set (AVX2, FMA, F16C, BMI); v4 adds AVX-512 F/BW/CD/DQ/VL. Each is
# scheduled for the CPU at hand (-mtune changes no instruction set: the tests build the same
# flags): generic tuning ran a batch-16 pass of block-quantized matmuls 5% slower.
_V3 = frozenset({"avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "abm", "movbe"})
_V4 = _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
_VNNI = _V4 | {"avx512_vnni"}
_BF16 = _VNNI | {"avx512_bf16"}

# Narrowest first: the last one a CPU runs is its default.
X86_VARIANTS = (
    InstructionSet("avx2", ("-march=x86-64-v3", "-mtune=native"), _V3),
    InstructionSet("avx512", ("-march=x86-64-v4", "-mtune=native"), _V4),
    # VNNI's 8-bit dot products (Cascade Lake, Ice Lake, Zen 4) without bf16 ones.
    InstructionSet("avx512_vnni", ("-march=x86-64-v4", "-mtune=native", "-mavx512vnni"), _VNNI),
    InstructionSet(
        "avx512_bf16",
        ("-march=x86-64-v4", "-mtune=native", "-mavx512vnni", "-mavx512bf16"),
        frozenset(_BF16),
    ),
    InstructionSet(
        "amx",
        ("-march=x86-64-v4", "-mtune=native", "-mavx512vnni", "-mavx512bf16", "-mamx-tile"),
        frozenset(_BF16 | {"amx_tile"}),
    ),
)
NATIVE = InstructionSet("native", ("-march=native",), frozenset())


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where there is none)."""
    return frozenset(_cpuinfo_field(("flags", "Features")).split())


@cache
def cpu_model_name() -> str:
    return _cpuinfo_field(("model name",)) or platform.processor() or platform.machine()


def describe() -> str:
    """The CPU, the variant the kernels are built for, and its vector extensions, as a
    benchmark's title names them (a result depends on all three)."""
    extensions = sorted(flag for flag in cpu_flags() if flag.startswith(("avx512", "amx")))
    has = f", has {' '.join(extensions)}" if extensions else ""
    return f"{cpu_model_name()}{has}; kernels built for {selected().name}"


def _cpuinfo_field(names: tuple[str, ...]) -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(names):
                return line.split(":", 1)[1].strip()
    return ""


def runnable() -> tuple[InstructionSet, ...]:
    """The variants this CPU runs, narrowest first."""
    if not is_x86():
        return (NATIVE,)
    variants = tuple(isa for isa in X86_VARIANTS if isa.needs <= cpu_flags())
    # An x86 CPU older than Haswell (or a /proc/cpuinfo we cannot read) builds for itself.
    return variants or (NATIVE,)


def selected() -> InstructionSet:
    """The variant kernels are built for now: TOME_CPU_ISA's, or the widest runnable one."""
    return _resolve(os.environ.get(ISA_ENV, "").strip().lower())


@cache
def _resolve(requested: str) -> InstructionSet:
    variants = runnable()
    if requested in ("", "auto"):
        return variants[-1]
    for isa in variants:
        if isa.name == requested:
            return isa
    names = ", ".join(isa.name for isa in variants)
    known = {isa.name for isa in (*X86_VARIANTS, NATIVE)}
    problem = "this CPU cannot run it" if requested in known else "no such instruction set"
    raise InvalidRequestError(f"{ISA_ENV}={requested}: {problem}; this CPU runs {names}")
