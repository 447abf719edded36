"""TOME_CPU_ISA chooses the instruction set the C++ kernels are built for: each variant
builds its own library, whose machine code uses that set's registers and no wider ones; by
default the widest the CPU runs; a name the CPU cannot run, or no such name, is one clear
error. (The kernels' results per variant are checked in their own tests, through the
each_cpu_isa fixture.)"""

import shutil
import subprocess

import pytest

from tome.errors import InvalidRequestError
from tome.kernels import cpu_isa, cpu_kernels

AVX2_ONLY = cpu_isa.X86_VARIANTS[0].needs | {"sse4_2"}


def disassembly(path) -> str:
    return subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(path)], capture_output=True, text=True
    ).stdout


@pytest.mark.skipif(not cpu_isa.is_x86() or shutil.which("objdump") is None, reason="x86 only")
@pytest.mark.parametrize("isa", cpu_isa.runnable(), ids=lambda isa: isa.name)
def test_each_variant_builds_its_own_code(isa, monkeypatch, tmp_path):
    monkeypatch.setenv(cpu_kernels.CACHE_ENV, str(tmp_path))
    library = cpu_kernels.build("layer_ops", isa)
    uses_512_bit_registers = "%zmm" in disassembly(library)
    assert uses_512_bit_registers == (isa.name != "avx2")
    assert library != cpu_kernels.build("layer_ops", isa, fast_math=False)


def test_the_default_is_the_widest_variant_the_cpu_runs(monkeypatch):
    monkeypatch.delenv(cpu_isa.ISA_ENV, raising=False)
    assert cpu_isa.selected() == cpu_isa.runnable()[-1]
    monkeypatch.setenv(cpu_isa.ISA_ENV, "auto")
    assert cpu_isa.selected() == cpu_isa.runnable()[-1]


@pytest.fixture
def avx2_only_cpu(monkeypatch):
    monkeypatch.setattr(cpu_isa, "is_x86", lambda: True)
    monkeypatch.setattr(cpu_isa, "cpu_flags", lambda: AVX2_ONLY)
    cpu_isa._resolve.cache_clear()
    yield
    cpu_isa._resolve.cache_clear()


def test_an_avx2_cpu_runs_only_the_avx2_variant(avx2_only_cpu, monkeypatch):
    assert [isa.name for isa in cpu_isa.runnable()] == ["avx2"]
    monkeypatch.setenv(cpu_isa.ISA_ENV, "AVX2")
    assert cpu_isa.selected().name == "avx2"


@pytest.mark.parametrize(
    ("requested", "message"),
    [("avx512", "this CPU cannot run it"), ("sse9", "no such instruction set")],
)
def test_a_variant_that_cannot_run_is_one_clear_error(
    avx2_only_cpu, monkeypatch, requested, message
):
    monkeypatch.setenv(cpu_isa.ISA_ENV, requested)
    with pytest.raises(InvalidRequestError, match=f"{message}; this CPU runs avx2$"):
        cpu_isa.selected()
