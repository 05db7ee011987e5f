#!/usr/bin/env python3
"""The SASS instruction mix of a w4a16 wgmma kernel's chunk loop as the GPU machine's CUDA 13.0 builds it, with no
GPU: NVRTC (the CUDA 13 wheel of this Python) compiles kernels/cuda/w4a16.cu + w4a16_sm90.cu for sm_90a with
-DW4_INSTANCE=<one macro call>, ptxas 13.0 assembles the PTX (the `nvidia-cuda-nvcc` 13.0 wheel, downloaded from PyPI
once into ~/.cache/olive-rs/nvcc-13.0; a newer ptxas schedules this kernel differently from the device), cuobjdump
disassembles it. Prints ptxas's registers, spills and C75xx warnings (serialized wgmmas), then the steady-state loop
of the consumers (the shortest backward branch over one stage: 4 * RT * CPS wgmmas) as instructions a chunk and warp,
by opcode:

    source target/olive-env.sh && "$OLIVE_TEST_VENV/bin/python" benches/gpu/sass_mix.py \\
        'W4_WSX(__nv_bfloat16,bf16,2,1,64,3,4,1,1)'
"""

import argparse
import collections
import ctypes
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from nvrtc_compile import compile_program, load_nvrtc, nvidia_root

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path.home() / ".cache" / "olive-rs" / "nvcc-13.0"
# The macros of w4a16_sm90.cu: (type, name, NWG, RT, COLS, S, CPS, MINB[, CL]).
WS_MACRO = re.compile(r"^W4_WS[CX]?\(([^)]*)\)$")
# Opcodes the integer (ALU) pipe issues.
ALU = {"LOP3", "SHF", "IADD3", "PRMT", "ISETP", "LEA", "PLOP3", "SEL", "MOV"}


def ptxas_13_0() -> Path:
    """ptxas of the nvidia-cuda-nvcc 13.0 wheel, fetched by pip into CACHE the first time."""
    found = list(CACHE.glob("x/nvidia/cu13/bin/ptxas"))
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "nvidia-cuda-nvcc==13.0.*",
                    "-d", str(CACHE)], check=True)
    wheel = next(CACHE.glob("nvidia_cuda_nvcc-13.0*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(CACHE / "x")
    ptxas = next(CACHE.glob("x/nvidia/cu13/bin/ptxas"))
    ptxas.chmod(0o755)
    return ptxas


def cuobjdump() -> Path:
    """The cuobjdump triton's wheel carries (any recent one reads sm_90a cubins)."""
    try:
        import triton
    except ImportError:
        sys.exit("sass_mix.py: no triton in this Python (its wheel carries cuobjdump); pass --cuobjdump")
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def sm90a_ptx(files: list[str], defines: list[str], tool: str) -> bytes:
    """PTX of prelude.cuh + `files` (under kernels/cuda) for sm_90a, its version lowered to the 9.0 that ptxas 13.0
    reads (a newer NVRTC writes a later version for the same instructions); `tool` names the caller in errors."""
    root = nvidia_root()
    nvrtc = load_nvrtc(root)
    cuda = ROOT / "kernels/cuda"
    source = b"".join((cuda / name).read_bytes() for name in ("prelude.cuh", *files))
    prog, _, log = compile_program(nvrtc, root / "include", "sm_90a", source, defines)
    if log is not None:
        sys.exit(f"{tool}: NVRTC failed ({' '.join(defines)}):\n{log[:3000]}")
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetPTX(prog, ptx)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return re.sub(rb"^\.version 9\.\d+", b".version 9.0", ptx.value, flags=re.M)


def assemble(ptx: bytes, work: Path, tool: str, ptxas: Path | None = None,
             disassembler: Path | None = None) -> tuple[str, str]:
    """ptxas (-v, CUDA 13.0's by default) on `ptx` for sm_90a in `work`, then cuobjdump -sass (triton's by default):
    (ptxas's report, the SASS dump); `tool` names the caller in errors."""
    source, cubin = work / "k.ptx", work / "k.cubin"
    source.write_bytes(ptx)
    out = subprocess.run([str(ptxas or ptxas_13_0()), "-arch=sm_90a", "-v", str(source), "-o", str(cubin)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{tool}: ptxas failed:\n{out.stderr[:3000]}")
    dump = subprocess.run([str(disassembler or cuobjdump()), "-sass", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    return out.stderr, dump


def opcode(line: str) -> str:
    body = re.sub(r"^\s*/\*[0-9a-f]+\*/\s+", "", line)
    body = re.sub(r"^@!?U?P\w+\s+", "", body)
    return body.split(" ")[0].split(".")[0]


def stage_loop(sass: list[str], hgmmas: int) -> tuple[int, int] | None:
    """Indices (first, last) of the shortest backward branch's body holding exactly `hgmmas` HGMMAs."""
    address = [int(re.match(r"\s*/\*([0-9a-f]+)\*/", line).group(1), 16) for line in sass]
    best = None
    for i, line in enumerate(sass):
        m = re.search(r"BRA (?:`\(\.L_x_\d+\) )?0x([0-9a-f]+)", line)
        if not m or int(m.group(1), 16) >= address[i] or int(m.group(1), 16) not in address:
            continue
        j = address.index(int(m.group(1), 16))
        if sum(1 for x in sass[j:i + 1] if "HGMMA" in x) == hgmmas and (best is None or i - j < best[1] - best[0]):
            best = (j, i)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("instance", help="one w4a16_sm90.cu macro call, e.g. W4_WSX(__nv_bfloat16,bf16,2,1,64,3,4,1,1)")
    ap.add_argument("--ptxas", type=Path, help="ptxas to use (default: CUDA 13.0's, from its PyPI wheel)")
    ap.add_argument("--cuobjdump", type=Path, help="cuobjdump to use (default: triton's)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/olive-sass-mix"), help="folder for the PTX and cubin")
    args = ap.parse_args()
    m = WS_MACRO.match(args.instance.replace(" ", ""))
    if not m:
        sys.exit("sass_mix.py: give a W4_WS, W4_WSC or W4_WSX macro call (the wgmma kernels)")
    fields = m.group(1).split(",")
    if len(fields) not in (8, 9) or not (fields[3].isdigit() and fields[6].isdigit()):
        sys.exit(f"sass_mix.py: {args.instance}: expected (type, name, NWG, RT, COLS, S, CPS, MINB[, CL]), integers "
                 "from NWG on")
    rt, cps = int(fields[3]), int(fields[6])
    args.work.mkdir(parents=True, exist_ok=True)
    ptx = sm90a_ptx(["w4a16.cu", "w4a16_sm90.cu"], [f"-DW4_INSTANCE={args.instance}"], "sass_mix.py")
    report, dump = assemble(ptx, args.work, "sass_mix.py", args.ptxas, args.cuobjdump)
    # The product kernel's lines of the report (its entry's line and the ones up to the next entry).
    ours = False
    for line in report.splitlines():
        if "Compiling entry function" in line:
            ours = "w4_ws" in line
        if ours or "C75" in line:
            print(line.strip())
    sass = [line for line in dump.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/", line)]
    loop = stage_loop(sass, 4 * rt * cps)
    if loop is None:
        sys.exit(f"sass_mix.py: no loop of {4 * rt * cps} HGMMAs (one stage) found")
    ops = collections.Counter(opcode(line) for line in sass[loop[0]:loop[1] + 1])
    total = loop[1] - loop[0] + 1
    alu = sum(n for op, n in ops.items() if op in ALU)
    print(f"stage loop: {total} instructions, {cps} chunks: {total / cps:.1f} a chunk and warp, "
          f"{alu / cps:.1f} of them on the ALU pipe ({', '.join(sorted(ALU))})")
    print("| opcode | a chunk |\n| --- | ---: |")
    for op, n in ops.most_common():
        print(f"| {op} | {n / cps:.2f} |")


if __name__ == "__main__":
    main()
