"""The CPU kernel tests again with each lower instruction set forced.

The library picks its loops' ISA once per process, the best the CPU has, capped by
ATEN_CPU_CAPABILITY (csrc/cpu/vec/isa.h). The main test run covers the machine's own ISA
only; the AVX2 and baseline instances have their own register blocking, remainders and
transposes, so the kernel tests whose results can differ by ISA (marker `isa`: reference
comparisons, non-finite values, thread-count determinism) run again here, in a subprocess per
ISA. The ISA-agnostic ones (opcheck, gradcheck, bad-input errors, output layouts and shapes)
check the registration, the autograd formulas and the checks, which are the same code under
every ISA: rerunning them cost most of the time and could not fail differently.
An ISA the CPU lacks, or the one the main run already used, is skipped with the reason.
"""

import os
import subprocess
import sys

import pytest
import torch

import ddf_ops  # noqa: F401  (loads the library)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_TESTS = [
    "tests/test_forward.py",
    "tests/test_head_kernel.py",
    "tests/test_channels_vectorized.py",
    "tests/test_backward.py",
    "tests/test_oracles.py",
    "tests/test_hostile_inputs.py",
    "tests/test_fuzz.py",
]
SELECTION = "isa and not cuda and not cuda_emulation"
# ATEN_CPU_CAPABILITY value -> what torch.ops.ddf._cpu_isa() reports under it.
FORCED = {"avx2": "AVX2", "default": "DEFAULT"}


def isa_under(env):
    code = "import ddf_ops, torch; print(torch.ops.ddf._cpu_isa())"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


# Minutes each (the machine's own run of the same tests, in a subprocess): a longer limit than
# pyproject's per-test one; the subprocess's own tests keep theirs.
@pytest.mark.forced_isa
@pytest.mark.timeout(3600)
@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64", reason="x86-64 ISAs only")
@pytest.mark.parametrize("aten_isa", sorted(FORCED))
def test_kernel_tests_pass_with_isa_forced(aten_isa):
    env = dict(os.environ, ATEN_CPU_CAPABILITY=aten_isa)
    got = isa_under(env)
    if got != FORCED[aten_isa]:
        pytest.skip(f"this CPU cannot run {FORCED[aten_isa]} (forcing it gave {got})")
    if got == torch.ops.ddf._cpu_isa():
        pytest.skip(f"{got} is this machine's ISA: the main test run covers it")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", SELECTION]
        + KERNEL_TESTS,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, f"kernel tests failed with ATEN_CPU_CAPABILITY={aten_isa}:\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
