"""tools.cuda_static.cuda_resources: its parsers on captured cuobjdump output, the occupancy
calculator on hand-worked cases, and the tool itself on the built library and on a small
spilling kernel (these skip, visibly, without cuobjdump / nvcc / a CUDA build)."""

import contextlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repo root off sys.path
    sys.path.insert(0, REPO_ROOT)

from tools.cuda_static import cuda_resources as cr  # noqa: E402

# `cuobjdump -res-usage ddf_ops/_C.abi3.so`, cut down: three functions of the sm_80 cubin, two
# of the sm_90 cubin, and the compute_90 PTX (which has no resource usage).
RES_USAGE_SAMPLE = """
Fatbin elf code:
================
arch = sm_80
code version = [1,8]
host = linux
compile_size = 64bit
identifier = /work/main/csrc/cuda/ddf_cuda.cu

Resource usage:
 Common:
  GLOBAL:28 CONSTANT[4]:224
 Function _ZN3ddf4cuda19grad_channel_kernelI13__nv_bfloat16LNS_7CombineE1EEEvPKT_NS_8Strides4ES6_S7_S6_S7_PS4_S7_NS_8GeometryE:
  REG:38 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:592 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _ZN3ddf4cuda19grad_spatial_kernelI13__nv_bfloat16LNS_7CombineE1EEEvPKT_NS_8Strides4ES6_S7_S6_S7_PS4_S7_NS_8GeometryE:
  REG:48 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:592 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _ZN3ddf4cuda17grad_input_kernelI13__nv_bfloat16LNS_7CombineE1EEEvPKT_NS_8Strides4ES6_S7_S6_S7_PS4_S7_NS_8GeometryE:
  REG:86 STACK:0 SHARED:0 LOCAL:0 CONSTANT[2]:24 CONSTANT[0]:592 TEXTURE:0 SURFACE:0 SAMPLER:0

Fatbin elf code:
================
arch = sm_90
code version = [1,8]
host = linux
compile_size = 64bit
identifier = /work/main/csrc/cuda/ddf_cuda.cu

Resource usage:
 Common:
  GLOBAL:28 CONSTANT[4]:224
 Function _ZN3ddf4cuda19grad_channel_kernelI13__nv_bfloat16LNS_7CombineE1EEEvPKT_NS_8Strides4ES6_S7_S6_S7_PS4_S7_NS_8GeometryE:
  REG:38 STACK:0 SHARED:2048 LOCAL:0 CONSTANT[0]:768 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _ZN3ddf4cuda19grad_spatial_kernelI13__nv_bfloat16LNS_7CombineE1EEEvPKT_NS_8Strides4ES6_S7_S6_S7_PS4_S7_NS_8GeometryE:
  REG:48 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:768 TEXTURE:0 SURFACE:0 SAMPLER:0

Fatbin ptx code:
================
arch = sm_90
code version = [9,0]
host = linux
compile_size = 64bit
compressed
identifier = /work/main/csrc/cuda/ddf_cuda.cu
ptxasOptions =  --generate-line-info
"""

SASS_SAMPLE = """
Fatbin elf code:
================
arch = sm_80
code version = [1,8]
host = linux
compile_size = 64bit

\tcode for sm_80
\t.target\tsm_80

\t\tFunction : _Z14unknown_kernelPf
\t.headerflags\t@"EF_CUDA_SM80 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM80)"
        /*0000*/                   MOV R1, c[0x0][0x28] ;                             /* 0x00000a0000017a02 */
                                                                                      /* 0x000fe40000000f00 */
        /*0010*/                   S2R R2, SR_TID.X ;                                 /* 0x0000000000027919 */
                                                                                      /* 0x000e220000002100 */
        /*0020*/                   HFMA2.MMA R3, -RZ, RZ, 0, 2.384185791015625e-07 ;  /* 0x00000004ff037435 */
                                                                                      /* 0x000fe200000001ff */
        /*0030*/                   MOV R5, 0x3f800000 ;                               /* 0x3f80000000057802 */
                                                                                      /* 0x000fe20000000f00 */
        /*0040*/                   ULDC.64 UR4, c[0x0][0x118] ;                       /* 0x0000460000047ab9 */
                                                                                      /* 0x000fd00000000a00 */
        /*0050*/                   IMAD.WIDE.U32 R2, R2, R3, c[0x0][0x160] ;          /* 0x0000580002027625 */
                                                                                      /* 0x001fca00078e0003 */
        /*0060*/                   STG.E [R2.64], R5 ;                                /* 0x0000000502007986 */
                                                                                      /* 0x000fe2000c101904 */
        /*0070*/                   EXIT ;                                             /* 0x000000000000794d */
                                                                                      /* 0x000fea0003800000 */
        /*0080*/                   BRA 0x80;                                          /* 0xfffffff000007947 */
                                                                                      /* 0x000fc0000383ffff */
        /*0090*/                   NOP;                                               /* 0x0000000000007918 */
                                                                                      /* 0x000fc00000000000 */
        /*00a0*/                   NOP;                                               /* 0x0000000000007918 */
                                                                                      /* 0x000fc00000000000 */
        /*00b0*/                   NOP;                                               /* 0x0000000000007918 */
                                                                                      /* 0x000fc00000000000 */
        /*00c0*/                   NOP;                                               /* 0x0000000000007918 */
                                                                                      /* 0x000fc00000000000 */
        /*00d0*/                   NOP;                                               /* 0x0000000000007918 */
                                                                                      /* 0x000fc00000000000 */
        /*00e0*/                   NOP;                                               /* 0x0000000000007918 */
                                                                                      /* 0x000fc00000000000 */
        /*00f0*/                   NOP;                                               /* 0x0000000000007918 */
                                                                                      /* 0x000fc00000000000 */
        /*0100*/                   NOP;                                               /* 0x0000000000007918 */
                                                                                      /* 0x000fc00000000000 */
        /*0110*/                   NOP;                                               /* 0x0000000000007918 */
                                                                                      /* 0x000fc00000000000 */
        /*0120*/                   NOP;                                               /* 0x0000000000007918 */
                                                                                      /* 0x000fc00000000000 */
        /*0130*/                   NOP;                                               /* 0x0000000000007918 */
                                                                                      /* 0x000fc00000000000 */
        /*0140*/                   NOP;                                               /* 0x0000000000007918 */
                                                                                      /* 0x000fc00000000000 */
        /*0150*/                   NOP;                                               /* 0x0000000000007918 */
                                                                                      /* 0x000fc00000000000 */
        /*0160*/                   NOP;                                               /* 0x0000000000007918 */
                                                                                      /* 0x000fc00000000000 */
        /*0170*/                   NOP;                                               /* 0x0000000000007918 */
                                                                                      /* 0x000fc00000000000 */
\t\t..........


\t\tFunction : spilly
\t.headerflags\t@"EF_CUDA_SM80 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM80)"
        /*0000*/                   IMAD.MOV.U32 R1, RZ, RZ, c[0x0][0x28] ;            /* 0x00000a00ff017624 */
                                                                                      /* 0x000fe400078e00ff */
        /*0010*/                   S2R R2, SR_TID.X ;                                 /* 0x0000000000027919 */
                                                                                      /* 0x000e220000002100 */
        /*0020*/                   IMAD.MOV.U32 R0, RZ, RZ, 0x4 ;                     /* 0x00000004ff007424 */
                                                                                      /* 0x000fe200078e00ff */
        /*0030*/                   ULDC.64 UR4, c[0x0][0x118] ;                       /* 0x0000460000047ab9 */
                                                                                      /* 0x000fe20000000a00 */
        /*0040*/                   IADD3 R1, R1, -0x100, RZ ;                         /* 0xffffff0001017810 */
                                                                                      /* 0x000fe40007ffe0ff */
        /*02c0*/                   STL.128 [R1], R8 ;                                 /* 0x0000000801007387 */
                                                                                      /* 0x0045e40000100c00 */
        /*04f0*/                   STL.128 [R1+0x10], R4 ;                            /* 0x0000100401007387 */
                                                                                      /* 0x0101e60000100c00 */
        /*0d70*/              @!P0 BRA 0x1200 ;                                       /* 0x0000048000008947 */
                                                                                      /* 0x000fea0003800000 */
        /*0f70*/                   LDL R11, [R15] ;                                   /* 0x000000000f0b7983 */
                                                                                      /* 0x0000a20000100800 */
        /*0fb0*/                   LDL R9, [R17] ;                                    /* 0x0000000011097983 */
                                                                                      /* 0x000ea20000100800 */
        /*10e0*/               @P1 BRA 0xe20 ;                                        /* 0xfffffd3000001947 */
                                                                                      /* 0x000fea000383ffff */
        /*1230*/                   EXIT ;                                             /* 0x000000000000794d */
                                                                                      /* 0x000fea0003800000 */
        /*1240*/                   BRA 0x1240;                                        /* 0xfffffff000007947 */
                                                                                      /* 0x000fc0000383ffff */
        /*1250*/                   NOP;                                               /* 0x0000000000007918 */
                                                                                      /* 0x000fc00000000000 */
        /*1260*/                   NOP;                                               /* 0x0000000000007918 */
                                                                                      /* 0x000fc00000000000 */
\t\t..........
"""


SM80 = cr.GPU_LIMITS["sm_80"]
SM86 = cr.GPU_LIMITS["sm_86"]
SM90 = cr.GPU_LIMITS["sm_90"]

GRAD_CHANNEL_BF16 = (
    "_ZN3ddf4cuda19grad_channel_kernelI13__nv_bfloat16LNS_7CombineE1EEEvPKT_NS_8Strides4ES6_S7_S6_S7_PS4_S7_NS_8GeometryE"
)
GRAD_INPUT_BF16 = (
    "_ZN3ddf4cuda17grad_input_kernelI13__nv_bfloat16LNS_7CombineE1EEEvPKT_NS_8Strides4ES6_S7_S6_S7_PS4_S7_NS_8GeometryE"
)


# ----------------------------------------------------------------------------- parsers


def test_parse_res_usage():
    res = cr.parse_res_usage(RES_USAGE_SAMPLE)
    assert res.elf_archs == ["sm_80", "sm_90"]
    assert res.ptx_archs == ["sm_90"]
    assert res.common == {"sm_80": {"GLOBAL": 28, "CONSTANT[4]": 224}, "sm_90": {"GLOBAL": 28, "CONSTANT[4]": 224}}
    assert [(f.arch, f.name[:30]) for f in res.functions] == [
        ("sm_80", "_ZN3ddf4cuda19grad_channel_ker"),
        ("sm_80", "_ZN3ddf4cuda19grad_spatial_ker"),
        ("sm_80", "_ZN3ddf4cuda17grad_input_kerne"),
        ("sm_90", "_ZN3ddf4cuda19grad_channel_ker"),
        ("sm_90", "_ZN3ddf4cuda19grad_spatial_ker"),
    ]
    channel80, _, input80, channel90, _ = res.functions
    assert channel80.name == GRAD_CHANNEL_BF16
    assert (channel80.registers, channel80.stack, channel80.shared, channel80.local) == (38, 0, 1024, 0)
    assert channel80.constant == {0: 592}
    assert channel80.identifier == "/work/main/csrc/cuda/ddf_cuda.cu"
    assert channel80.other == {"TEXTURE": 0, "SURFACE": 0, "SAMPLER": 0}
    assert input80.name == GRAD_INPUT_BF16
    assert (input80.registers, input80.constant) == (86, {2: 24, 0: 592})
    assert (channel90.registers, channel90.shared, channel90.constant) == (38, 2048, {0: 768})


def test_parse_res_usage_values_on_the_function_line():
    res = cr.parse_res_usage("Fatbin elf code:\narch = sm_86\n Function k: REG:12 STACK:16 SHARED:0 LOCAL:8\n")
    (f,) = res.functions
    assert (f.arch, f.name, f.registers, f.stack, f.local) == ("sm_86", "k", 12, 16, 8)


def test_parse_sass():
    stats = cr.parse_sass(SASS_SAMPLE)
    assert set(stats) == {("sm_80", "_Z14unknown_kernelPf"), ("sm_80", "spilly")}
    plain = stats[("sm_80", "_Z14unknown_kernelPf")]
    # /*0000*/ .. /*0170*/: 7 instructions, EXIT, the BRA to itself, 15 NOPs of padding
    assert (plain.instructions, plain.nops, plain.stl, plain.ldl) == (24, 15, 0, 0)
    spilly = stats[("sm_80", "spilly")]
    # the excerpt: 5 + STL.128 x2 + @!P0 BRA + LDL x2 + @P1 BRA + EXIT + BRA + NOP x2
    assert (spilly.instructions, spilly.nops) == (15, 2)
    assert (spilly.stl, spilly.stl_bytes, spilly.ldl, spilly.ldl_bytes) == (2, 32, 2, 8)


def test_parse_sass_arch_argument():
    body = SASS_SAMPLE.split("\tcode for sm_80\n", 1)[1]  # no "arch = " line left
    assert set(cr.parse_sass(body, arch="sm_90")) == {("sm_90", "_Z14unknown_kernelPf"), ("sm_90", "spilly")}


@pytest.mark.parametrize(
    "modifiers, width",
    [("", 4), (".U8", 1), (".S16", 2), (".64", 8), (".128", 16), (".LU.64", 8), (".EF.128", 16)],
)
def test_local_access_width(modifiers, width):
    assert cr._ls_width(modifiers) == width


# The records nvdisasm shows for a kernel with __launch_bounds__(256) (real bytes), and an
# EIATTR_REQNTID (64, 2, 1) from a kernel given `.reqntid 64, 2, 1` in its PTX.
NV_INFO_MAX_THREADS = bytes.fromhex(
    "0135 0000"  # EIATTR_SW2861232_WAR, EIFMT_NVAL
    "0319 f000"  # EIATTR_CBANK_PARAM_SIZE, EIFMT_HVAL 0xf0
    "031b ff00"  # EIATTR_MAXREG_COUNT 0xff
    "024c 0100"  # EIATTR_NUM_BARRIERS, EIFMT_BVAL 1
    "0405 0c00 00010000 01000000 01000000"  # EIATTR_MAX_THREADS, EIFMT_SVAL: 256, 1, 1
)
NV_INFO_REQNTID = bytes.fromhex("0405 0c00 80000000 01000000 01000000 0410 0c00 40000000 02000000 01000000")


def test_parse_nv_info():
    assert cr.parse_nv_info(NV_INFO_MAX_THREADS) == [
        (1, 0x35, 0),
        (3, 0x19, 0xF0),
        (3, 0x1B, 0xFF),
        (2, 0x4C, 1),
        (4, 0x05, struct.pack("<3I", 256, 1, 1)),
    ]


def _elf64(sections):
    """A minimal little-endian ELF64 file with the given (name, contents) sections."""
    names = b"\0.shstrtab\0" + b"".join(n.encode() + b"\0" for n, _ in sections)
    bodies = [(b"", 0, 0), (names, 1, 3)]  # (contents, name offset, sh_type): null, .shstrtab
    offset = len(b"\0.shstrtab\0")
    for n, data in sections:
        bodies.append((data, offset, 0x70000000))  # SHT_LOPROC + 0 (CUDA_INFO is 0x70000000)
        offset += len(n) + 1
    data = bytearray(64)
    headers = []
    for contents, name, sh_type in bodies:
        headers.append(struct.pack("<IIQQQQIIQQ", name, sh_type, 0, 0, len(data), len(contents), 0, 0, 1, 0))
        data += contents
    shoff = len(data)
    data += b"".join(headers)
    data[:16] = b"\x7fELF\x02\x01\x01" + bytes(9)
    struct.pack_into("<Q", data, 0x28, shoff)
    struct.pack_into("<HHH", data, 0x3A, 64, len(headers), 1)
    return bytes(data)


def test_cubin_launch_bounds():
    cubin = _elf64(
        [
            (".nv.info", b""),
            (".nv.info.bounded", NV_INFO_MAX_THREADS),
            (".nv.info.exact", NV_INFO_REQNTID),
            (".nv.info.plain", bytes.fromhex("0135 0000")),
            (".text.bounded", b"\0" * 32),
        ]
    )
    assert set(cr.elf_sections(cubin)) >= {".shstrtab", ".nv.info.bounded", ".text.bounded"}
    assert cr.cubin_launch_bounds(cubin) == {"bounded": ("launch_bounds", 256), "exact": ("reqntid", 128)}


PTX_SAMPLE = """
.visible .entry bounded(
.param .u64 bounded_param_0
)
.maxntid 128, 2, 1
{
ret;
}
.visible .entry exact(
.param .u64 exact_param_0
)
.maxntid 512, 1, 1
.reqntid 64, 1, 1
{
ret;
}
.visible .entry plain(
.param .u64 plain_param_0
)
{
.reg .b32 %r<2>;
.maxntid 999, 1, 1
ret;
}
"""


def test_parse_ptx_launch_bounds():
    assert cr.parse_ptx_launch_bounds(PTX_SAMPLE) == {"bounded": ("maxntid", 256), "exact": ("reqntid", 64)}


def test_block_size_sources():
    elf = {("sm_80", "k_bounded"): ("launch_bounds", 128)}
    ptx = {"k_ptx": ("maxntid", 64)}
    table = [("forward_kernel", 512)]
    pick = lambda arch, name, dem="": cr.block_size(arch, name, dem, elf, ptx, table, default=256)  # noqa: E731
    assert pick("sm_80", "k_bounded") == (128, "cubin launch_bounds")
    assert pick("sm_90", "k_ptx") == (64, "ptx .maxntid")
    assert pick("sm_80", "_ZN3ddf4cuda14forward_kernelIfEEvv") == (512, "table")
    assert pick("sm_80", "k", "void ns::forward_kernel<float>()") == (512, "table")
    assert pick("sm_80", "k_unknown") == (256, "assumed")


@pytest.mark.parametrize(
    "demangled, compact",
    [
        (
            "void ddf::cuda::forward_kernel<__nv_bfloat16, (ddf::Combine)1>(__nv_bfloat16 const*, ddf::Strides4, "
            "__nv_bfloat16 const*, ddf::Strides4, __nv_bfloat16 const*, ddf::Strides4, __nv_bfloat16*, "
            "ddf::Strides4, ddf::Geometry)",
            "forward_kernel<bf16,(Combine)1>",
        ),
        ("void ddf::cuda::grad_channel_kernel<double, (ddf::Combine)0>(double const*, ddf::Geometry)",
         "grad_channel_kernel<f64,(Combine)0>"),
        ("void ns::k<__half, unsigned int, 256>(float*)", "k<f16,u32,256>"),
        ("void ns::k<ns::Tile<float, 8> >(int)", "k<Tile<float,8>>"),
        ("spilly", "spilly"),
        ("unknown_kernel(float*)", "unknown_kernel"),
    ],
)
def test_compact_name(demangled, compact):
    assert cr.compact_name(demangled) == compact


def test_build_rows_flags_spills_and_stack_frames():
    res = cr.parse_res_usage(
        "Fatbin elf code:\narch = sm_80\n Function spilly:\n  REG:32 STACK:256 SHARED:0 LOCAL:0 CONSTANT[0]:376\n"
        " Function _Z14unknown_kernelPf:\n  REG:8 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:360\n"
    )
    rows = cr.build_rows(res, cr.parse_sass(SASS_SAMPLE), {("sm_80", "spilly"): ("launch_bounds", 128)}, {},
                         {"_Z14unknown_kernelPf": "unknown_kernel(float*)"})
    spilly, plain = sorted(rows, key=lambda r: r.compact)
    assert spilly.problems == [
        "spilly [sm_80]: uses local memory (register spills or a local array): 2 STL (32 B stored), 2 LDL (8 B loaded), "
        "LOCAL 0 B per thread",
        "spilly [sm_80]: 256 B stack frame (STACK 256)",
    ]
    assert (spilly.block_size, spilly.block_size_source) == (128, "cubin launch_bounds")
    assert (plain.compact, plain.problems, plain.block_size_source) == ("unknown_kernel", [], "assumed")
    report = cr.Report("lib.so", "cuobjdump", ["sm_80"], [], rows)
    assert not report.ok
    assert report.summary() == (
        "cuda-resources: 2 kernels x 1 archs checked, 1 spills, 1 stack frames: FAILED (1 kernel/arch rows with problems)"
    )
    json.dumps(report.to_dict())


# ----------------------------------------------------------------------------- occupancy


def _occ(regs, threads, smem, limits, dynamic=0):
    o = cr.occupancy(regs, threads, smem, limits, dynamic)
    return o.blocks_per_sm, o.warps_per_sm, round(100 * o.fraction, 1), o.limited_by


def test_occupancy_hand_worked():
    # 32 regs x 32 lanes = 1024 regs per warp (4 units of 256); 16384 regs per sub-partition
    # hold 16 warps, x4 = 64 warps = 8 blocks of 8 warps: registers and the 64-warp limit agree.
    assert _occ(32, 256, 0, SM90) == (8, 64, 100.0, ["warps", "registers"])
    assert _occ(32, 256, 0, SM80) == (8, 64, 100.0, ["warps", "registers"])
    # 96 regs: 3072 per warp; floor(16384 / 3072) = 5 warps per sub-partition, 20 per SM,
    # 2 blocks of 8 warps = 16 of 64 warps.
    assert _occ(96, 256, 0, SM90) == (2, 16, 25.0, ["registers"])
    # 38 regs: 1216 per warp, allocated as 1280 (5 units): 12 warps per sub-partition, 48 per
    # SM, 6 blocks.
    assert _occ(38, 256, 0, SM80) == (6, 48, 75.0, ["registers"])
    assert _occ(40, 256, 0, SM80) == (6, 48, 75.0, ["registers"])
    # 72 regs: exactly 2304 per warp (9 units): 7 warps per sub-partition, 28 per SM, 3 blocks.
    assert _occ(72, 256, 0, SM90) == (3, 24, 37.5, ["registers"])
    # 255 regs: 8160 -> 8192 per warp: 2 warps per sub-partition, 8 per SM, 1 block.
    assert _occ(255, 256, 0, SM90) == (1, 8, 12.5, ["registers"])


def test_occupancy_register_sub_partitions():
    # 40 regs, 64-thread blocks: 1280 regs per warp. 65536 / 1280 would allow 51 warps (25
    # blocks), but registers are split over 4 sub-partitions of 16384: 12 warps each, 48 in
    # all, 24 blocks of 2 warps.
    o = cr.occupancy(40, 64, 0, SM90)
    assert (o.by_registers, o.blocks_per_sm, o.warps_per_sm, o.regs_per_warp_allocated) == (24, 24, 48, 1280)


def test_occupancy_shared_memory():
    # 48 KiB static + 1 KiB reserved = 50176 B per block: sm_80 fits floor(164 KiB / 50176) = 3
    # blocks (24 warps), sm_90 floor(228 KiB / 50176) = 4 (32 warps). (An sm_90 cubin's
    # SHARED holds the reserved 1 KiB already: 49 KiB there is 48 KiB of variables.)
    assert _occ(32, 256, 48 * 1024, SM80) == (3, 24, 37.5, ["shared"])
    assert _occ(32, 256, 49 * 1024, SM90) == (4, 32, 50.0, ["shared"])
    # grad_channel_kernel<f32>: 1 KiB of __shared__ is SHARED 1024 on sm_80, 2048 on sm_90;
    # 2048 B per block either way, and a kernel without shared memory still gets 1 KiB.
    assert cr.occupancy(32, 256, 1024, SM80).smem_per_block_allocated == 2048
    assert cr.occupancy(32, 256, 2048, SM90).smem_per_block_allocated == 2048
    assert cr.occupancy(32, 256, 0, SM90).smem_per_block_allocated == 1024
    # 1000 B + 1024 reserved = 2024, allocated in 128-byte units: 2048.
    o = cr.occupancy(32, 256, 1000, SM80)
    assert (o.smem_per_block_allocated, o.by_shared) == (2048, 82)
    # dynamic shared memory counts too: 100 KiB + 1 KiB on sm_90 -> 2 blocks
    assert _occ(32, 256, 0, SM90, dynamic=100 * 1024) == (2, 16, 25.0, ["shared"])


def test_occupancy_warp_and_block_limits():
    # 32-thread blocks: 64 warps would allow 64 blocks, the SM takes 32: 50%.
    assert _occ(16, 32, 0, SM90) == (32, 32, 50.0, ["blocks"])
    # sm_86: 48 warps per SM, 16 blocks; 256 threads x 32 regs: 6 blocks by warps, 8 by regs.
    assert _occ(32, 256, 0, SM86) == (6, 48, 100.0, ["warps"])
    assert _occ(16, 64, 0, SM86) == (16, 32, 66.7, ["blocks"])
    # 100 threads are allocated as 4 warps
    assert cr.occupancy(32, 100, 0, SM90).warps_per_sm == 64


def test_occupancy_impossible_launches():
    # 1024 threads x 80 regs: 2560 regs per warp x 32 warps > 65536 per block
    o = cr.occupancy(80, 1024, 0, SM90)
    assert (o.blocks_per_sm, o.by_registers) == (0, 0) and "per block" in o.reason
    assert cr.occupancy(256, 32, 0, SM90).reason == "256 registers > 255 per thread"
    assert cr.occupancy(32, 2048, 0, SM90).blocks_per_sm == 0
    assert cr.occupancy(32, 256, 48 * 1024 + 1, SM80).blocks_per_sm == 0
    assert cr.occupancy(32, 256, 49 * 1024 + 1, SM90).blocks_per_sm == 0
    assert cr.occupancy(32, 256, 0, SM80, dynamic_smem=164 * 1024).blocks_per_sm == 0
    with pytest.raises(ValueError):
        cr.occupancy(32, 0, 0, SM90)


def test_limits_for():
    assert cr.limits_for("sm_90a") is SM90
    assert cr.limits_for("sm_80") is SM80
    assert cr.limits_for("sm_120") is None and cr.limits_for("compute_90") is None


# The kernels' dynamic shared memory, by kernel-name substring: the tiled kernels' come from
# the plan (torch.ops.ddf._cuda_tiled_plan); every other kernel is launched with none.
TILED_PLAN_KERNELS = {
    "tiled_forward_kernel": "forward",
    "tiled_grad_input_kernel": "grad_input",
    "tiled_filter_grads_kernel": "filter_grads",
}


def largest_planned_shared_bytes(kernel):
    """The most dynamic shared memory the tiled plan asks for, over k, stride, dilation, map
    sizes and channel counts (large dilations reach the budget's edge)."""
    import torch

    largest = 0
    for k in (3, 5, 7):
        for stride in (1, 2):
            for dilation in range(1, 17):
                for size in (7, 14, 28, 56, 57, 112):
                    for channels in (1, 8, 64):
                        plan = torch.ops.ddf._cuda_tiled_plan(kernel, 2, channels, size, size, k, 1, stride, dilation)
                        if plan[0]:
                            largest = max(largest, plan[11])
    return largest


def test_shared_memory_within_budget(built_library_report):
    """Static shared memory, read off each cubin, plus the most dynamic shared memory the plan
    ever requests for that kernel fits in 48 KiB, the limit per block without the opt-in
    attribute (which the kernels do not set), for every kernel and architecture; and each
    tiled kernel's static bytes are what the plan budgets for (kStaticSharedBytes)."""
    import torch

    import ddf_ops  # noqa: F401  (loads LIBRARY's ops)

    if not hasattr(torch.ops.ddf, "_cuda_tiled_shared_budget"):
        pytest.fail("the built library predates torch.ops.ddf._cuda_tiled_shared_budget: rebuild it (make build)")
    total, static_budget, dynamic_budget = torch.ops.ddf._cuda_tiled_shared_budget()
    assert total == 48 * 1024 and static_budget + dynamic_budget == total
    largest = {name: largest_planned_shared_bytes(kernel) for name, kernel in TILED_PLAN_KERNELS.items()}
    # The channels_last kernels: their staged channel filters (and the filter gradients' per-warp
    # sums), largest for k = 7 (the plans halve the lanes to fit).
    nhwc_largest = {kernel: max(torch.ops.ddf._cuda_nhwc_plan(2, channels, 14, 14, k, 1, 1, 1, element_bytes, kernel)[8]
                                for k in (3, 5, 7) for channels in (1, 8, 64, 256, 1024) for element_bytes in (4, 2))
                    for kernel in ("forward", "grad_input", "filter_grads")}
    for kernel, request in nhwc_largest.items():
        assert dynamic_budget - 24 * 1024 < request <= total, (kernel, request)
    for name, request in largest.items():
        # The sweep reaches the budget's edge (so it tests the budget, not small plans) and
        # never passes it.
        assert dynamic_budget - 4096 < request <= dynamic_budget, (name, request, dynamic_budget)
    checked = 0
    for r in built_library_report.rows:
        limits = cr.limits_for(r.arch)
        assert limits is not None, f"{r.compact}: no limits for {r.arch}"
        static = r.shared
        if limits.static_smem_includes_reserved and static > 0:
            static -= limits.reserved_smem_per_block  # sm_90's SHARED counts the reserved 1 KiB
        tiled = [name for name in TILED_PLAN_KERNELS if name in r.demangled]
        nhwc = [kernel for kernel in nhwc_largest if f"nhwc_{kernel}_kernel" in r.demangled]
        dynamic = largest[tiled[0]] if tiled else nhwc_largest[nhwc[0]] if nhwc else 0
        assert static + dynamic <= total, (
            f"{r.compact} [{r.arch}]: {static} B static + {dynamic} B dynamic shared memory > {total} B per block"
        )
        if tiled:
            assert static <= static_budget, f"{r.compact} [{r.arch}]: {static} B static > the plan's {static_budget}"
            checked += 1
    assert checked > 0, "no tiled kernel in the library"


def test_filter_grads_wave_matches_the_cubins(built_library_report):
    """The filter-gradient plan splits a head's channels for whole waves of kWaveSms x
    filter_grads_blocks_per_sm(k) blocks (csrc/cuda/ddf_cuda_tiled_plan.h). Those blocks per
    SM are what the sm_90 cubins' registers allow for 256-thread blocks in the variant of
    that k with the most registers (the plan does not know the dtype or the combine: k = 5
    "add" holds 2 blocks, "mul" 1): when a kernel's registers change, so must the plan."""
    import re

    import torch

    import ddf_ops  # noqa: F401  (loads LIBRARY's ops)

    if not hasattr(torch.ops.ddf, "_cuda_tiled_filter_grads_wave"):
        pytest.fail("the built library predates torch.ops.ddf._cuda_tiled_filter_grads_wave: rebuild it (make build)")
    seen = {}
    for r in built_library_report.rows:
        if r.arch != "sm_90" or "tiled_filter_grads_kernel" not in r.demangled:
            continue
        # tiled_filter_grads_kernel<scalar_t, Combine, K, S, R>
        k = int(re.search(r"tiled_filter_grads_kernel<[^,]+, [^,]+, (\d+), ", r.demangled).group(1))
        occ = cr.occupancy(r.registers, 256, 0, cr.limits_for("sm_90"))
        seen.setdefault(k, set()).add(occ.by_registers)
    assert sorted(seen) == [3, 5, 7], seen
    for k, blocks in seen.items():
        sms, planned = torch.ops.ddf._cuda_tiled_filter_grads_wave(k)
        assert sms == 132
        assert min(blocks) == planned, f"k={k}: the sm_90 cubins hold {sorted(blocks)} blocks per SM, the plan assumes {planned}"


def test_nhwc_wave_matches_the_cubins(built_library_report):
    """The channels_last plans size their pixels per thread for whole waves of kWaveSms x the
    blocks per SM of their kernel (csrc/cuda/ddf_cuda_nhwc_plan.h): blocks_per_sm(k, vector)
    for the forward and grad_input, kGradBlocksPerSm for the filter gradients, each the fewest
    blocks per SM that any of that kernel's, k's and vector width's sm_90 variants hold
    (registers). One channel per thread (calls that cannot use vectors): the plan may assume
    fewer blocks than the cubins hold, never more."""
    import re

    import torch

    import ddf_ops  # noqa: F401  (loads LIBRARY's ops)

    seen = {}
    for r in built_library_report.rows:
        m = re.search(r"nhwc_(forward|grad_input|filter_grads)_kernel<[^,]+, [^,]+, (\d+), \d+, (\d+)>", r.demangled)
        if r.arch != "sm_90" or m is None:
            continue
        kernel, k, vector = m.group(1), int(m.group(2)), int(m.group(3))
        occ = cr.occupancy(r.registers, 256, 0, cr.limits_for("sm_90"))
        # grad_input shares the forward's launch bounds and wave.
        seen.setdefault((kernel == "filter_grads", k, vector), set()).add(occ.by_registers)
    assert sorted(seen) == [(grads, k, v) for grads in (False, True) for k in (3, 5, 7) for v in (1, 4, 8)], seen
    for (grads, k, vector), blocks in seen.items():
        sms, planned, grad_planned = torch.ops.ddf._cuda_nhwc_wave(k, vector)
        assert sms == 132
        expected = grad_planned if grads else planned
        what = f"k={k} vector={vector} {'filter gradients' if grads else 'forward, grad_input'}"
        if vector == 1:
            assert min(blocks) >= expected, f"{what}: the sm_90 cubins hold {sorted(blocks)} blocks per SM, the plan assumes {expected}"
        else:
            assert min(blocks) == expected, f"{what}: the sm_90 cubins hold {sorted(blocks)} blocks per SM, the plan assumes {expected}"


# ----------------------------------------------------------------------------- the tool

CUOBJDUMP = cr.find_tool("cuobjdump", "CUOBJDUMP")
needs_cuobjdump = pytest.mark.skipif(CUOBJDUMP is None, reason="no cuobjdump (CUDA toolkit or triton): skipped")


def run_main(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cr.main(list(argv))
    return status, out.getvalue()


@needs_cuobjdump
def test_cpu_only_library():
    import _ctypes  # any shared object without device code

    status, out = run_main(_ctypes.__file__)
    assert status == 1
    assert "library has no CUDA kernels (CPU-only build): nothing to check" in out
    assert run_main(_ctypes.__file__, "--allow-cpu-only")[0] == 0


def test_missing_library(capsys):
    assert cr.main(["/nonexistent/_C.so"]) == 2
    assert "no such library" in capsys.readouterr().err


SPILL_CU = r"""
extern "C" __global__ void __launch_bounds__(128) spilly(const float* in, float* out, int n, int k) {
  float a[64];  // indexed at run time: lives in local memory, on the stack
#pragma unroll
  for (int i = 0; i < 64; ++i) a[i] = in[threadIdx.x + i * n];
  float s = 0;
  for (int i = 0; i < n; ++i) s += a[(i * k) & 63] * a[(i + k) & 63];
  out[threadIdx.x] = s;
}
__global__ void unknown_kernel(float* out) { out[threadIdx.x] = 1.f; }
"""


def _nvcc():
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and os.access(os.path.join(root, "bin", "nvcc"), os.X_OK):
            return os.path.join(root, "bin", "nvcc")
    return shutil.which("nvcc")


@needs_cuobjdump
@pytest.mark.skipif(_nvcc() is None, reason="no nvcc: the spilling-kernel test skipped")
def test_tool_fails_on_a_spilling_kernel(tmp_path):
    (tmp_path / "spill.cu").write_text(SPILL_CU)
    fatbin = tmp_path / "spill.fatbin"
    subprocess.run([_nvcc(), "-fatbin", "-gencode", "arch=compute_80,code=sm_80", str(tmp_path / "spill.cu"),
                    "-o", str(fatbin)], check=True, capture_output=True)
    status, out = run_main(str(fatbin))
    assert status == 1, out
    assert "FAILED: spilly [sm_80]: uses local memory" in out
    assert "FAILED: spilly [sm_80]: 256 B stack frame" in out
    assert "1 spills, 1 stack frames: FAILED" in out
    assert "block size assumed (256) for 1 kernels" in out and "unknown_kernel" in out
    status, out = run_main(str(fatbin), "--json")
    assert status == 1
    result = json.loads(out)
    rows = {r["compact"]: r for r in result["kernels"]}
    assert not result["ok"] and set(rows) == {"spilly", "unknown_kernel"}
    assert (rows["spilly"]["block_size"], rows["spilly"]["block_size_source"]) == (128, "cubin launch_bounds")
    assert rows["spilly"]["stl"] > 0 and rows["spilly"]["spill_store_bytes"] > 0 and rows["spilly"]["stack"] == 256
    assert rows["unknown_kernel"]["problems"] == [] and rows["unknown_kernel"]["block_size_source"] == "assumed"


LIBRARY = cr.default_library()


@pytest.fixture(scope="module")
def built_library_report():
    if LIBRARY is None:
        pytest.skip("no built library ddf_ops/_C*.so: run `make build`")
    if CUOBJDUMP is None:
        pytest.skip("no cuobjdump (CUDA toolkit or triton): skipped")
    report = cr.analyze_library(LIBRARY)
    if not report.rows:
        pytest.skip(f"{os.path.basename(LIBRARY)}: {report.message}")
    return report


def test_built_library(built_library_report):
    """The tool on ddf_ops/_C*.so: every kernel has a cubin for every architecture, and none
    spills or has a stack frame (what `make cuda-resources` checks)."""
    report = built_library_report
    archs = set(report.elf_archs)
    kernels = report.kernels
    assert {(r.name, r.arch) for r in report.rows} == {(k, a) for k in kernels for a in archs}
    for r in report.rows:
        assert r.registers > 0 and r.sass_instructions > 0, r.compact
        assert r.block_size > 0 and r.block_size_source != "", r.compact
        if cr.limits_for(r.arch):
            assert 0 < r.occupancy.fraction <= 1, r.compact
    assert report.ok, "\n".join(p for r in report.rows for p in r.problems)
    assert report.summary() == f"cuda-resources: {len(kernels)} kernels x {len(archs)} archs checked, 0 spills, 0 stack frames: OK"
    table = cr.format_table(report.rows)
    assert len(table.splitlines()) == 2 + len(report.rows) + len({r.compact for r in report.rows}) - 1
    assert json.loads(json.dumps(report.to_dict()))["ok"]
