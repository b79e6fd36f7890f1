"""Static resource checks of the compiled CUDA kernels: no GPU needed.

    python -m tools.cuda_static.cuda_resources [LIBRARY] [--json] [--allow-cpu-only]

Reads the cubins embedded in the library (default: ddf_ops/_C*.so) with cuobjdump and
prints, per kernel and per cubin architecture: registers, stack frame, local memory,
static shared memory, constant banks, the SASS instruction count, the local-memory
instructions (STL/LDL) and the bytes they move, the block size and where it came from,
and the theoretical occupancy on that architecture.

Exit status: 0 when no kernel spills or has a stack frame; 1 when one does (each named,
with its architecture), or when the library has no CUDA kernels (a CPU-only build; exit 0
with --allow-cpu-only); 2 when the check cannot run (no library, no cuobjdump).

What is measured, and how:
  * `cuobjdump -res-usage`: REG, STACK, SHARED (static), LOCAL, CONSTANT[n] per function.
  * `cuobjdump -sass -arch ARCH` (one process per architecture, in parallel): instructions
    per function, and its STL/LDL with their widths. A cubin records no "spill" counter
    (only `ptxas -v` prints one), so spills are detected as LOCAL > 0 or any STL/LDL; the
    STL/LDL bytes are what `ptxas -v` would report as spill stores/loads when all local
    traffic is spill traffic (a local array would show up the same way, and fail too).
  * `cuobjdump -xelf all`: the cubins, whose .nv.info.<kernel> sections carry
    EIATTR_REQNTID / EIATTR_MAX_THREADS (from __launch_bounds__); and `cuobjdump -ptx`:
    `.reqntid` / `.maxntid` in the embedded PTX.
    Block size, in order: those, then BLOCK_SIZE_TABLE (a kernel-name substring), then
    DEFAULT_BLOCK_SIZE ("assumed").
  * occupancy(): the CUDA occupancy calculator's rules (cuda_occupancy.h) for warps,
    blocks, registers (256-register allocation unit per warp, registers split over 4
    sub-partitions) and shared memory (128-byte unit, 1 KiB reserved per block, the
    largest carveout), with GPU_LIMITS per architecture.

Tools: $CUOBJDUMP and $CXXFILT override; otherwise $CUDA_HOME/bin, /usr/local/cuda/bin, PATH,
then the copy shipped in the triton wheel (triton/backends/nvidia/bin).

The functions (parse_res_usage, parse_sass, cubin_launch_bounds, parse_ptx_launch_bounds,
occupancy, analyze_library) are meant to be imported, e.g. by a GPU performance model.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib.util
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

# tools/cuda_static/ -> the repository (its ddf_ops/_C*.so and .venv).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Threads per block of the kernels that carry no __launch_bounds__, keyed by a substring
# of the (mangled or demangled) kernel name; the first match wins. Keep in step with the
# launches in csrc/cuda.
BLOCK_SIZE_TABLE: List[Tuple[str, int]] = [
    # The tiled kernels (ddf_cuda_tiled_kernels.cuh) carry __maxnreg__ instead; their blocks
    # have at most tiled::kBlockThreads threads (ddf_cuda_tiled_plan.h).
    ("tiled_", 256),
    ("sum_channel_partials_kernel", 256),
    ("sum_spatial_partials_kernel", 256),
    ("forward_kernel", 256),
    ("grad_input_kernel", 256),
    ("grad_spatial_kernel", 256),
    ("grad_channel_kernel", 256),
]
DEFAULT_BLOCK_SIZE = 256


# --------------------------------------------------------------------------- limits


@dataclasses.dataclass(frozen=True)
class GpuLimits:
    """Per-SM limits of one architecture, as the CUDA occupancy calculator uses them."""

    arch: str
    max_threads_per_sm: int
    max_blocks_per_sm: int
    smem_per_sm: int  # the largest shared-memory carveout, bytes (includes the reserved part)
    max_smem_per_block_optin: int  # dynamic + static, with cudaFuncSetAttribute
    max_static_smem_per_block: int = 48 * 1024
    reserved_smem_per_block: int = 1024  # the driver's per-block reservation (sm_80 and up)
    # sm_90 cubins place a kernel's __shared__ variables after the reserved 1 KiB (the SASS
    # addresses them from 0x400) and their SHARED counts it: 2048 for 1 KiB of variables,
    # where `ptxas -v` says 1024 and the sm_80 cubin says 1024. Not added a second time then.
    static_smem_includes_reserved: bool = False
    smem_alloc_unit: int = 128
    regs_per_sm: int = 65536
    regs_per_block: int = 65536
    max_regs_per_thread: int = 255
    reg_alloc_unit: int = 256  # registers are allocated per warp in units of 256
    sub_partitions: int = 4  # registers are split evenly over the SM's 4 sub-partitions
    max_threads_per_block: int = 1024
    warp_size: int = 32

    @property
    def max_warps_per_sm(self) -> int:
        return self.max_threads_per_sm // self.warp_size


KIB = 1024
GPU_LIMITS: Dict[str, GpuLimits] = {
    # A100
    "sm_80": GpuLimits("sm_80", max_threads_per_sm=2048, max_blocks_per_sm=32, smem_per_sm=164 * KIB,
                       max_smem_per_block_optin=163 * KIB),
    # GA10x (RTX 30xx, A10, A40)
    "sm_86": GpuLimits("sm_86", max_threads_per_sm=1536, max_blocks_per_sm=16, smem_per_sm=100 * KIB,
                       max_smem_per_block_optin=99 * KIB),
    # AD10x (RTX 40xx, L4, L40)
    "sm_89": GpuLimits("sm_89", max_threads_per_sm=1536, max_blocks_per_sm=24, smem_per_sm=100 * KIB,
                       max_smem_per_block_optin=99 * KIB),
    # H100 / H200
    "sm_90": GpuLimits("sm_90", max_threads_per_sm=2048, max_blocks_per_sm=32, smem_per_sm=228 * KIB,
                       max_smem_per_block_optin=227 * KIB, static_smem_includes_reserved=True),
}


def limits_for(arch: str) -> Optional[GpuLimits]:
    """GPU_LIMITS for 'sm_90', also for 'sm_90a' / 'sm_90f'; None if unknown."""
    m = re.fullmatch(r"sm_(\d+)[a-z]?", arch)
    return GPU_LIMITS.get(f"sm_{m.group(1)}") if m else None


# --------------------------------------------------------------------------- occupancy


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


@dataclasses.dataclass
class Occupancy:
    blocks_per_sm: int
    warps_per_sm: int
    max_warps_per_sm: int
    # blocks per SM allowed by each resource alone
    by_warps: int
    by_blocks: int
    by_registers: int
    by_shared: int
    limited_by: List[str]  # the resources at the minimum ("warps", "blocks", "registers", "shared")
    regs_per_warp_allocated: int
    smem_per_block_allocated: int
    reason: str = ""  # why blocks_per_sm is 0, if it is

    @property
    def fraction(self) -> float:
        return self.warps_per_sm / self.max_warps_per_sm

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["fraction"] = self.fraction
        return d


def occupancy(
    regs_per_thread: int,
    threads_per_block: int,
    static_smem: int,
    limits: GpuLimits,
    dynamic_smem: int = 0,
) -> Occupancy:
    """Theoretical occupancy of one kernel launch on one SM (cuda_occupancy.h's rules).

    Registers: each warp gets regs_per_thread * 32 rounded up to 256; the 65536 registers
    are split over 4 sub-partitions, so warps = 4 * floor(16384 / regs per warp), and
    blocks = floor(warps / warps per block). Shared memory: per block, static + dynamic +
    1 KiB reserved, rounded up to 128 bytes; blocks = floor(carveout / that).

    static_smem is the cubin's SHARED (`cuobjdump -res-usage`), which on sm_90 already
    holds the reserved 1 KiB when it is not 0 (GpuLimits.static_smem_includes_reserved).
    """
    L = limits
    if threads_per_block <= 0:
        raise ValueError(f"threads_per_block must be positive, got {threads_per_block}")
    warps_per_block = math.ceil(threads_per_block / L.warp_size)
    reasons = []

    if threads_per_block > L.max_threads_per_block:
        by_warps = 0
        reasons.append(f"{threads_per_block} threads > {L.max_threads_per_block} per block")
    else:
        by_warps = L.max_warps_per_sm // warps_per_block
    by_blocks = L.max_blocks_per_sm

    regs_per_warp = _round_up(regs_per_thread * L.warp_size, L.reg_alloc_unit)
    regs_assumed_per_block = regs_per_warp * _round_up(warps_per_block, L.sub_partitions)
    if regs_per_thread > L.max_regs_per_thread:
        by_registers = 0
        reasons.append(f"{regs_per_thread} registers > {L.max_regs_per_thread} per thread")
    elif max(regs_assumed_per_block, regs_per_warp * warps_per_block) > L.regs_per_block:
        by_registers = 0
        reasons.append(f"{regs_assumed_per_block} registers > {L.regs_per_block} per block")
    elif regs_per_warp == 0:
        by_registers = by_blocks
    else:
        warps_per_sub_partition = (L.regs_per_sm // L.sub_partitions) // regs_per_warp
        by_registers = warps_per_sub_partition * L.sub_partitions // warps_per_block

    user_static = static_smem
    if L.static_smem_includes_reserved and static_smem > 0:
        user_static = max(0, static_smem - L.reserved_smem_per_block)
    smem_per_block = _round_up(user_static + dynamic_smem + L.reserved_smem_per_block, L.smem_alloc_unit)
    if user_static > L.max_static_smem_per_block:
        by_shared = 0
        reasons.append(f"{user_static} B static shared > {L.max_static_smem_per_block} per block")
    elif user_static + dynamic_smem > L.max_smem_per_block_optin:
        by_shared = 0
        reasons.append(f"{user_static + dynamic_smem} B shared > {L.max_smem_per_block_optin} per block")
    else:
        by_shared = L.smem_per_sm // smem_per_block

    limits_by = {"warps": by_warps, "blocks": by_blocks, "registers": by_registers, "shared": by_shared}
    blocks = min(limits_by.values())
    return Occupancy(
        blocks_per_sm=blocks,
        warps_per_sm=blocks * warps_per_block,
        max_warps_per_sm=L.max_warps_per_sm,
        by_warps=by_warps,
        by_blocks=by_blocks,
        by_registers=by_registers,
        by_shared=by_shared,
        limited_by=[k for k, v in limits_by.items() if v == blocks],
        regs_per_warp_allocated=regs_per_warp,
        smem_per_block_allocated=smem_per_block,
        reason="; ".join(reasons),
    )


# --------------------------------------------------------------------------- parsers


@dataclasses.dataclass
class FunctionResources:
    """One function of one cubin, as `cuobjdump -res-usage` reports it."""

    arch: str
    name: str  # mangled
    registers: int
    stack: int
    shared: int  # static shared memory, bytes
    local: int  # local memory per thread, bytes
    constant: Dict[int, int]  # bank -> bytes
    identifier: str = ""  # the source file the cubin came from
    other: Dict[str, int] = dataclasses.field(default_factory=dict)  # TEXTURE, SURFACE, SAMPLER, ...


@dataclasses.dataclass
class ResUsage:
    functions: List[FunctionResources]
    elf_archs: List[str]  # archs with a cubin, in order, without repeats
    ptx_archs: List[str]  # archs with embedded PTX
    common: Dict[str, Dict[str, int]]  # arch -> module-wide resources (GLOBAL, CONSTANT[4])


_KV = re.compile(r"([A-Z_]+(?:\[(\d+)\])?):(\d+)")


def _parse_kv(text: str) -> Dict[str, int]:
    return {m.group(1): int(m.group(3)) for m in _KV.finditer(text)}


def parse_res_usage(text: str) -> ResUsage:
    """Parses `cuobjdump -res-usage` output (all cubins, all functions)."""
    functions: List[FunctionResources] = []
    elf_archs: List[str] = []
    ptx_archs: List[str] = []
    common: Dict[str, Dict[str, int]] = {}
    kind = arch = identifier = None
    pending: Optional[str] = None  # a "Function X:" line whose numbers are on the next line
    in_common = False

    def add(name: str, values: Dict[str, int]) -> None:
        constant = {int(k[9:-1]): v for k, v in values.items() if k.startswith("CONSTANT[")}
        known = {"REG", "STACK", "SHARED", "LOCAL"}
        functions.append(
            FunctionResources(
                arch=arch or "?",
                name=name,
                registers=values.get("REG", 0),
                stack=values.get("STACK", 0),
                shared=values.get("SHARED", 0),
                local=values.get("LOCAL", 0),
                constant=constant,
                identifier=identifier or "",
                other={k: v for k, v in values.items() if k not in known and not k.startswith("CONSTANT[")},
            )
        )

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Fatbin elf code"):
            kind, arch, identifier, pending, in_common = "elf", None, None, None, False
        elif line.startswith("Fatbin ptx code"):
            kind, arch, identifier, pending, in_common = "ptx", None, None, None, False
        elif line.startswith("arch = "):
            arch = line.split("=", 1)[1].strip()
            target = elf_archs if kind == "elf" else ptx_archs
            if kind and arch not in target:
                target.append(arch)
        elif line.startswith("identifier = "):
            identifier = line.split("=", 1)[1].strip()
        elif line == "Common:":
            in_common = True
        elif line.startswith("Function "):
            in_common = False
            m = re.match(r"Function (\S+?):\s*(.*)$", line)
            if not m:
                continue
            if "REG:" in m.group(2):
                add(m.group(1), _parse_kv(m.group(2)))
            else:
                pending = m.group(1)
        elif pending and "REG:" in line:
            add(pending, _parse_kv(line))
            pending = None
        elif in_common and ":" in line and arch:
            common.setdefault(arch, {}).update(_parse_kv(line))
    return ResUsage(functions, elf_archs, ptx_archs, common)


# width in bytes of a local load/store, by its type modifier (none: 32 bits)
_LS_WIDTH = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "32": 4, "64": 8, "128": 16}
_SASS_MARK = re.compile(r"^(?:arch = (\S+)|[ \t]*Function : (\S+))[ \t]*$", re.M)
# "        /*0130*/              @!P0 EXIT ;   /* 0x000000000000894d */" -> ("EXIT", "")
_SASS_INSN = re.compile(r"^[ \t]*/\*[0-9a-f]{4,}\*/[ \t]+(?:@!?U?P[T0-9]+[ \t]+)?([A-Z][A-Z0-9_]*)((?:\.[A-Z0-9_]+)*)", re.M)


@dataclasses.dataclass
class SassStats:
    instructions: int = 0  # everything disassembled, the alignment NOPs at the end included
    nops: int = 0
    stl: int = 0  # local stores (spill stores, or stores to a local array)
    ldl: int = 0  # local loads
    stl_bytes: int = 0
    ldl_bytes: int = 0


def _ls_width(modifiers: str) -> int:
    for mod in modifiers.split("."):
        if mod in _LS_WIDTH:
            return _LS_WIDTH[mod]
    return 4


def parse_sass(text: str, arch: Optional[str] = None) -> Dict[Tuple[str, str], SassStats]:
    """Parses `cuobjdump -sass` output: (arch, mangled function) -> SassStats.

    `arch` names the architecture until an "arch = ..." line does. Subroutines that ptxas
    placed in the kernel's section (e.g. 64-bit division) count toward that kernel, as
    they are in its `Function :` block.
    """
    stats: Dict[Tuple[str, str], SassStats] = {}
    marks = list(_SASS_MARK.finditer(text))
    for i, mark in enumerate(marks):
        if mark.group(1):
            arch = mark.group(1)
            continue
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        s = stats.setdefault((arch or "?", mark.group(2)), SassStats())
        for op, mods in _SASS_INSN.findall(text, mark.end(), end):
            s.instructions += 1
            if op == "NOP":
                s.nops += 1
            elif op == "STL":
                s.stl += 1
                s.stl_bytes += _ls_width(mods)
            elif op == "LDL":
                s.ldl += 1
                s.ldl_bytes += _ls_width(mods)
    return stats


def _threads(values: Sequence[int]) -> int:
    return math.prod(v for v in values if v > 0) if values else 0


# .nv.info records: format byte, attribute byte, then a 16-bit value (EIFMT_HVAL/BVAL/NVAL)
# or, for EIFMT_SVAL, a 16-bit size and that many bytes.
EIFMT_SVAL = 0x04
EIATTR_MAX_THREADS = 0x05  # __launch_bounds__(N): .maxntid
EIATTR_REQNTID = 0x10  # .reqntid: the exact block size


def parse_nv_info(data: bytes) -> List[Tuple[int, int, object]]:
    """The records of one .nv.info section: (format, attribute, int value or payload bytes)."""
    records, pos = [], 0
    while pos + 4 <= len(data):
        fmt, attr, value = struct.unpack_from("<BBH", data, pos)
        pos += 4
        if fmt == EIFMT_SVAL:
            records.append((fmt, attr, data[pos:pos + value]))
            pos += value
        else:
            records.append((fmt, attr, value))
    return records


def elf_sections(data: bytes) -> Dict[str, bytes]:
    """name -> contents of the sections of a little-endian ELF64 file (a cubin)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]

    def body(h):
        return b"" if h[1] == 8 else data[h[4]:h[4] + h[5]]  # SHT_NOBITS has no contents

    names = body(headers[shstrndx])
    return {names[h[0]:names.index(b"\0", h[0])].decode(): body(h) for h in headers}


def cubin_launch_bounds(cubin: bytes) -> Dict[str, Tuple[str, int]]:
    """kernel -> ("reqntid"|"launch_bounds", threads per block) from a cubin's .nv.info.<kernel>.

    EIATTR_REQNTID (an exact block size) wins over EIATTR_MAX_THREADS (__launch_bounds__).
    """
    found: Dict[str, Tuple[str, int]] = {}
    for name, contents in elf_sections(cubin).items():
        if not name.startswith(".nv.info."):
            continue
        kernel = name[len(".nv.info."):]
        for fmt, attr, value in parse_nv_info(contents):
            if fmt != EIFMT_SVAL or attr not in (EIATTR_REQNTID, EIATTR_MAX_THREADS):
                continue
            threads = _threads(struct.unpack(f"<{len(value) // 4}I", value[: len(value) // 4 * 4]))
            if attr == EIATTR_REQNTID or kernel not in found:
                found[kernel] = ("reqntid" if attr == EIATTR_REQNTID else "launch_bounds", threads)
    return found


def parse_ptx_launch_bounds(text: str) -> Dict[str, Tuple[str, int]]:
    """Parses PTX (`cuobjdump -ptx`): entry -> ("reqntid"|"maxntid", threads)."""
    found: Dict[str, Tuple[str, int]] = {}
    entry: Optional[str] = None
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"\.(?:visible\s+|weak\s+)*\.entry\s+([\w$.]+)", s)
        if m:
            entry = m.group(1)
            continue
        if entry is None:
            continue
        if s.startswith("{"):
            entry = None
            continue
        m = re.match(r"\.(reqntid|maxntid)\s+([\d,\s]+)", s)
        if m:
            threads = _threads([int(v) for v in m.group(2).replace(",", " ").split()])
            if m.group(1) == "reqntid" or entry not in found:
                found[entry] = (m.group(1), threads)
    return found


# --------------------------------------------------------------------------- names

_TYPE_SHORT = {
    "__nv_bfloat16": "bf16",
    "__half": "f16",
    "float": "f32",
    "double": "f64",
    "signed char": "i8",
    "unsigned char": "u8",
    "int": "i32",
    "unsigned int": "u32",
    "long": "i64",
    "unsigned long": "u64",
    "long long": "i64",
    "unsigned long long": "u64",
    "c10::Half": "f16",
    "c10::BFloat16": "bf16",
}


def _split_top(s: str, sep: str = ",") -> List[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(s[start:i].strip())
            start = i + 1
    parts.append(s[start:].strip())
    return [p for p in parts if p]


def _strip_ns(s: str) -> str:
    # ns::ns::x -> x (outside template brackets it is all we want)
    return re.sub(r"\b(?:[A-Za-z_]\w*::)+", "", s)


def compact_name(demangled: str) -> str:
    """'void ddf::cuda::forward_kernel<__nv_bfloat16, (ddf::Combine)1>(...)'
    -> 'forward_kernel<bf16,(Combine)1>'."""
    s = demangled.strip()
    # drop the parameter list: the last top-level '(...)'
    depth = 0
    for i in range(len(s) - 1, -1, -1):
        if s[i] == ")":
            depth += 1
        elif s[i] == "(":
            depth -= 1
            if depth == 0:
                if i > 0 and s[i - 1] not in " <,":
                    s = s[:i]
                break
    # drop the return type: the text before the name (a space outside brackets)
    depth, cut = 0, 0
    for i, ch in enumerate(s):
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif ch == " " and depth == 0:
            cut = i + 1
    s = s[cut:]
    lt = s.find("<")
    if lt < 0 or not s.endswith(">"):
        return _strip_ns(s)
    base, args = _strip_ns(s[:lt]), _split_top(s[lt + 1:-1])
    short = []
    for a in args:
        a = _TYPE_SHORT.get(a, a)
        a = _strip_ns(a)
        short.append(_TYPE_SHORT.get(a, a).replace(" ", ""))
    return f"{base}<{','.join(short)}>"


def demangle(names: Iterable[str], cxxfilt: Optional[str]) -> Dict[str, str]:
    """mangled -> demangled, with one c++filt process; names stay as they are without it."""
    names = list(dict.fromkeys(names))
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names) + "\n", capture_output=True, text=True)
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) != len(names):
        return {n: n for n in names}
    return dict(zip(names, lines))


# --------------------------------------------------------------------------- block size


def block_size(
    arch: str,
    name: str,
    demangled: str,
    elf_bounds: Dict[Tuple[str, str], Tuple[str, int]],
    ptx_bounds: Dict[str, Tuple[str, int]],
    table: Sequence[Tuple[str, int]] = BLOCK_SIZE_TABLE,
    default: int = DEFAULT_BLOCK_SIZE,
) -> Tuple[int, str]:
    """(threads per block, where it came from) for one kernel of one cubin."""
    if (arch, name) in elf_bounds:
        kind, threads = elf_bounds[(arch, name)]
        if threads > 0:
            return threads, f"cubin {kind}"
    if name in ptx_bounds:
        kind, threads = ptx_bounds[name]
        if threads > 0:
            return threads, f"ptx .{kind}"
    for substring, threads in table:
        if substring in name or substring in demangled:
            return threads, "table"
    return default, "assumed"


# --------------------------------------------------------------------------- tools


class ToolError(RuntimeError):
    pass


def find_tool(name: str, env_var: str) -> Optional[str]:
    """$env_var, else $CUDA_HOME/bin, /usr/local/cuda/bin, PATH, then the triton wheel's copy."""
    if os.environ.get(env_var):
        path = os.environ[env_var]
        found = shutil.which(path)
        if not found:
            raise ToolError(f"${env_var}={path} is not an executable")
        return found
    candidates = []
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            candidates.append(os.path.join(root, "bin", name))
    on_path = shutil.which(name)
    if on_path:
        candidates.append(on_path)
    spec = importlib.util.find_spec("triton") if name != "c++filt" else None
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates.append(os.path.join(loc, "backends", "nvidia", "bin", name))
    if name != "c++filt":
        for base in (sys.prefix, os.path.join(REPO_ROOT, ".venv")):
            candidates += sorted(glob.glob(os.path.join(base, "lib", "python3*", "site-packages", "triton", "backends",
                                                        "nvidia", "bin", name)))
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def default_library() -> Optional[str]:
    found = sorted(glob.glob(os.path.join(REPO_ROOT, "ddf_ops", "_C*.so")))
    return found[0] if found else None


def _run(cmd: List[str], cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)


NO_DEVICE_CODE = "does not contain device code"


# --------------------------------------------------------------------------- analysis


@dataclasses.dataclass
class KernelRow:
    arch: str
    name: str  # mangled
    demangled: str
    compact: str
    registers: int
    stack: int
    local: int
    shared: int
    constant: Dict[int, int]
    sass_instructions: Optional[int]
    stl: Optional[int]
    ldl: Optional[int]
    spill_store_bytes: Optional[int]  # STL bytes
    spill_load_bytes: Optional[int]  # LDL bytes
    block_size: int
    block_size_source: str
    occupancy: Optional[Occupancy]
    problems: List[str]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["constant"] = {str(k): v for k, v in self.constant.items()}
        d["occupancy"] = self.occupancy.to_dict() if self.occupancy else None
        return d


@dataclasses.dataclass
class Report:
    library: str
    cuobjdump: str
    elf_archs: List[str]
    ptx_archs: List[str]
    rows: List[KernelRow]
    cpu_only: bool = False
    message: str = ""  # for cpu_only / no cubins

    @property
    def kernels(self) -> List[str]:
        return list(dict.fromkeys(r.name for r in self.rows))

    @property
    def spills(self) -> List[KernelRow]:
        return [r for r in self.rows if r.local > 0 or (r.stl or 0) > 0 or (r.ldl or 0) > 0]

    @property
    def stack_frames(self) -> List[KernelRow]:
        return [r for r in self.rows if r.stack > 0]

    @property
    def ok(self) -> bool:
        return bool(self.rows) and not any(r.problems for r in self.rows)

    def summary(self) -> str:
        if not self.rows:
            return f"cuda-resources: {self.message}"
        archs = list(dict.fromkeys(r.arch for r in self.rows))
        head = (
            f"cuda-resources: {len(self.kernels)} kernels x {len(archs)} archs checked, "
            f"{len(self.spills)} spills, {len(self.stack_frames)} stack frames"
        )
        if self.ok:
            return head + ": OK"
        return head + f": FAILED ({sum(1 for r in self.rows if r.problems)} kernel/arch rows with problems)"

    def to_dict(self) -> dict:
        return {
            "library": self.library,
            "cuobjdump": self.cuobjdump,
            "elf_archs": self.elf_archs,
            "ptx_archs": self.ptx_archs,
            "cpu_only": self.cpu_only,
            "message": self.message,
            "ok": self.ok,
            "summary": self.summary(),
            "limits": {a: dataclasses.asdict(GPU_LIMITS[a]) for a in GPU_LIMITS},
            "block_size_table": BLOCK_SIZE_TABLE,
            "kernels": [r.to_dict() for r in self.rows],
        }


def _arch_key(arch: str) -> Tuple[int, str]:
    m = re.match(r"sm_(\d+)(.*)", arch)
    return (int(m.group(1)), m.group(2)) if m else (0, arch)


def build_rows(
    res: ResUsage,
    sass: Dict[Tuple[str, str], SassStats],
    elf_bounds: Dict[Tuple[str, str], Tuple[str, int]],
    ptx_bounds: Dict[str, Tuple[str, int]],
    demangled: Dict[str, str],
) -> List[KernelRow]:
    """Joins the parsed outputs into one row per (function, cubin arch), with the checks."""
    rows = []
    for f in res.functions:
        d = demangled.get(f.name, f.name)
        s = sass.get((f.arch, f.name))
        threads, source = block_size(f.arch, f.name, d, elf_bounds, ptx_bounds)
        lim = limits_for(f.arch)
        occ = occupancy(f.registers, threads, f.shared, lim) if lim else None
        problems = []
        where = f"{compact_name(d)} [{f.arch}]"
        if f.local > 0 or (s and (s.stl or s.ldl)):
            problems.append(
                f"{where}: uses local memory (register spills or a local array): "
                + (f"{s.stl} STL ({s.stl_bytes} B stored), {s.ldl} LDL ({s.ldl_bytes} B loaded), " if s else "")
                + f"LOCAL {f.local} B per thread"
            )
        if f.stack > 0:
            problems.append(f"{where}: {f.stack} B stack frame (STACK {f.stack})")
        if s is None:
            problems.append(f"{where}: no SASS found for this function")
        if occ is not None and occ.blocks_per_sm == 0:
            problems.append(f"{where}: cannot launch with {threads} threads/block: {occ.reason}")
        rows.append(
            KernelRow(
                arch=f.arch,
                name=f.name,
                demangled=d,
                compact=compact_name(d),
                registers=f.registers,
                stack=f.stack,
                local=f.local,
                shared=f.shared,
                constant=f.constant,
                sass_instructions=s.instructions if s else None,
                stl=s.stl if s else None,
                ldl=s.ldl if s else None,
                spill_store_bytes=s.stl_bytes if s else None,
                spill_load_bytes=s.ldl_bytes if s else None,
                block_size=threads,
                block_size_source=source,
                occupancy=occ,
                problems=problems,
            )
        )
    rows.sort(key=lambda r: (r.compact.split("<")[0], r.compact, _arch_key(r.arch)))
    return rows


def analyze_library(path: str, cuobjdump: Optional[str] = None, cxxfilt: Optional[str] = None,
                    jobs: Optional[int] = None) -> Report:
    """Runs cuobjdump on the library and returns the Report (raises ToolError if it cannot)."""
    if not os.path.isfile(path):
        raise ToolError(f"no such library: {path}")
    cuobjdump = cuobjdump or find_tool("cuobjdump", "CUOBJDUMP")
    if not cuobjdump:
        raise ToolError("cuobjdump not found: set $CUOBJDUMP, or install the CUDA toolkit or triton")
    if cxxfilt is None:
        cxxfilt = find_tool("c++filt", "CXXFILT")

    out = _run([cuobjdump, "-res-usage", path])
    if out.returncode != 0:
        text = (out.stdout + out.stderr).strip()
        if NO_DEVICE_CODE in text:
            return Report(path, cuobjdump, [], [], [], cpu_only=True,
                          message="library has no CUDA kernels (CPU-only build): nothing to check")
        raise ToolError(f"{cuobjdump} -res-usage {path} failed ({out.returncode}): {text}")
    res = parse_res_usage(out.stdout)
    if not res.elf_archs:
        what = f"PTX only ({', '.join(res.ptx_archs)}), " if res.ptx_archs else ""
        return Report(path, cuobjdump, [], res.ptx_archs, [], cpu_only=not res.ptx_archs,
                      message=f"library has no CUDA kernels ({what}no cubins): nothing to check"
                      if res.ptx_archs else "library has no CUDA kernels (CPU-only build): nothing to check")

    commands = {a: [cuobjdump, "-sass", "-arch", a, path] for a in res.elf_archs}
    if res.ptx_archs:
        commands["ptx"] = [cuobjdump, "-ptx", path]
    with tempfile.TemporaryDirectory(prefix="cuda_resources.") as tmp:
        commands["xelf"] = [cuobjdump, "-xelf", "all", path]
        with ThreadPoolExecutor(max_workers=jobs or max(2, os.cpu_count() or 2)) as pool:
            futures = {k: pool.submit(_run, cmd, tmp if k == "xelf" else None) for k, cmd in commands.items()}
            outputs = {k: f.result() for k, f in futures.items()}
        for k, o in outputs.items():
            if o.returncode != 0:
                raise ToolError(f"{' '.join(commands[k])} failed ({o.returncode}): {o.stderr.strip()}")
        elf_bounds: Dict[Tuple[str, str], Tuple[str, int]] = {}
        for cubin in sorted(glob.glob(os.path.join(tmp, "*.cubin"))):
            m = re.search(r"\.(sm_\w+)\.cubin$", cubin)
            with open(cubin, "rb") as f:
                bounds = cubin_launch_bounds(f.read())
            elf_bounds.update({(m.group(1) if m else "?", k): v for k, v in bounds.items()})

    sass: Dict[Tuple[str, str], SassStats] = {}
    for a in res.elf_archs:
        sass.update(parse_sass(outputs[a].stdout, arch=a))
    ptx_bounds = parse_ptx_launch_bounds(outputs["ptx"].stdout) if res.ptx_archs else {}
    demangled = demangle((f.name for f in res.functions), cxxfilt)
    rows = build_rows(res, sass, elf_bounds, ptx_bounds, demangled)
    return Report(path, cuobjdump, res.elf_archs, res.ptx_archs, rows)


# --------------------------------------------------------------------------- output


def _fmt_occupancy(o: Optional[Occupancy]) -> str:
    if o is None:
        return "n/a (no limits for arch)"
    short = {"warps": "warps", "blocks": "blocks", "registers": "regs", "shared": "smem"}
    return (f"{100 * o.fraction:5.1f}% {o.warps_per_sm:2d}/{o.max_warps_per_sm}w "
            f"{o.blocks_per_sm:2d}blk {'+'.join(short[x] for x in o.limited_by)}")


def format_table(rows: Sequence[KernelRow]) -> str:
    headers = ["kernel", "arch", "regs", "stack", "lmem", "smem", "spill st/ld B", "insts", "STL/LDL",
               "block", "block from", "occupancy (limiter)", "cmem B"]

    def opt(v) -> str:
        return "?" if v is None else str(v)

    table = [
        [
            r.compact,
            r.arch,
            str(r.registers),
            str(r.stack),
            str(r.local),
            str(r.shared),
            f"{opt(r.spill_store_bytes)}/{opt(r.spill_load_bytes)}",
            opt(r.sass_instructions),
            f"{opt(r.stl)}/{opt(r.ldl)}",
            str(r.block_size),
            r.block_size_source,
            _fmt_occupancy(r.occupancy),
            " ".join(f"c{b}={v}" for b, v in sorted(r.constant.items())),
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h) for i, h in enumerate(headers)]
    left = {0, 1, 10, 11, 12}

    def line(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    prev = None
    for r, cells in zip(rows, table):
        if prev is not None and r.compact != prev:
            out.append("")
        prev = r.compact
        out.append(line(cells))
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.cuda_static.cuda_resources",
        description="Static resource checks (registers, spills, stack, shared memory, occupancy) of the "
        "CUDA kernels embedded in the library; no GPU needed.",
    )
    parser.add_argument("library", nargs="?", help="the library (default: ddf_ops/_C*.so in the repository)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--allow-cpu-only", action="store_true",
                        help="exit 0 when the library has no CUDA kernels (a CPU-only build)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    path = args.library or default_library()
    if not path:
        print(f"cuda-resources: no library: no ddf_ops/_C*.so in {REPO_ROOT} (run `make build`)", file=sys.stderr)
        return 2
    try:
        report = analyze_library(path)
    except ToolError as e:
        print(f"cuda-resources: cannot check: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start

    if not report.rows:
        status = 0 if (report.cpu_only and args.allow_cpu_only) else 1
        if args.json:
            print(json.dumps(report.to_dict(), indent=1))
        print(f"cuda-resources: {report.message}", file=sys.stderr if args.json else sys.stdout)
        return status

    if args.json:
        d = report.to_dict()
        d["seconds"] = round(elapsed, 3)
        print(json.dumps(d, indent=1))
    else:
        print(f"library: {report.library}")
        print(f"cubins: {', '.join(report.elf_archs)}; PTX: {', '.join(report.ptx_archs) or 'none'}"
              f" (PTX is JIT-compiled on newer GPUs and is not checked); cuobjdump: {report.cuobjdump}")
        print("occupancy: theoretical, on the row's architecture (limits: "
              + "; ".join(f"{a}: {L.max_warps_per_sm} warps, {L.max_blocks_per_sm} blocks, "
                          f"{L.smem_per_sm // KIB} KiB smem, {L.regs_per_sm} regs"
                          for a, L in GPU_LIMITS.items()) + ")")
        print("spill st/ld B: bytes moved by the STL/LDL instructions in the SASS (no GPU, no ptxas -v)")
        print()
        print(format_table(report.rows))
        print()
    # In table mode everything goes to stdout, in order; with --json, stdout is only JSON.
    log = sys.stderr if args.json else sys.stdout
    assumed = sorted({r.compact for r in report.rows if r.block_size_source == "assumed"})
    if assumed:
        print(f"cuda-resources: note: block size assumed ({DEFAULT_BLOCK_SIZE}) for {len(assumed)} kernels without "
              f"launch bounds or a BLOCK_SIZE_TABLE entry: {', '.join(assumed)}", file=log)
    for r in report.rows:
        for p in r.problems:
            print(f"cuda-resources: FAILED: {p}", file=log)
    print(report.summary() + ("" if args.json else f" ({elapsed:.1f} s)"), file=log)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
