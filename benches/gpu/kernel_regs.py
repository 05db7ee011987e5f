#!/usr/bin/env python3
"""Registers, spills, shared memory and SASS length of every kernel of some kernels/cuda files as the GPU machine's
CUDA 13.0 builds them for sm_90a, with no GPU: NVRTC (the CUDA 13 wheel of this Python) compiles prelude.cuh + the
files as `Gpu::function` does, ptxas 13.0 assembles the PTX, cuobjdump disassembles it (as sass_mix.py). With --sass,
each kernel's instructions go to <dir>/<kernel>.sass, one a line, to read or diff:

    source target/olive-env.sh && "$OLIVE_TEST_VENV/bin/python" benches/gpu/kernel_regs.py matmul.cu
    "$OLIVE_TEST_VENV/bin/python" benches/gpu/kernel_regs.py w4a16.cu w4a16_sm90.cu \\
        -D 'W4_INSTANCE=W4_MM(__nv_bfloat16,bf16,1,1,16,1,1,1,3)' --sass /tmp/w4
"""

import argparse
import re
import sys
from pathlib import Path

from sass_mix import ROOT, assemble, sm90a_ptx

INSTRUCTION = re.compile(r"^\s+/\*[0-9a-f]{4}\*/\s+(.*?)\s*;")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", help="kernel files under kernels/cuda, compiled together after prelude.cuh")
    ap.add_argument("-D", dest="defines", action="append", default=[], help="NAME=VALUE for the compile")
    ap.add_argument("--sass", type=Path, help="folder for each kernel's instructions")
    ap.add_argument("--work", type=Path, default=Path("/tmp/olive-kernel-regs"), help="folder for the PTX and cubin")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    missing = [name for name in args.files if not (ROOT / "kernels/cuda" / name).is_file()]
    if missing:
        sys.exit(f"kernel_regs.py: not in kernels/cuda: {', '.join(missing)}")
    ptx = sm90a_ptx(args.files, [f"-D{d}" for d in args.defines], "kernel_regs.py")
    report, dump = assemble(ptx, args.work, "kernel_regs.py")
    sass: dict[str, list[str]] = {}
    for part in dump.split("Function : ")[1:]:
        name = part.split()[0]
        sass[name] = [m.group(1) for m in map(INSTRUCTION.match, part.splitlines()) if m]
    if args.sass:
        args.sass.mkdir(parents=True, exist_ok=True)
        for name, lines in sass.items():
            (args.sass / f"{name}.sass").write_text("\n".join(lines) + "\n")
    print("| kernel | registers | spill stores / loads (bytes) | stack | shared | instructions |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    name, stack, spills = None, 0, "0 / 0"
    for line in report.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            name, stack, spills = m.group(1), 0, "0 / 0"
        elif m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
            stack, spills = int(m.group(1)), f"{m.group(2)} / {m.group(3)}"
        elif (m := re.search(r"Used (\d+) registers", line)) and name:
            shared = re.search(r"(\d+) bytes smem", line)
            print(f"| {name} | {m.group(1)} | {spills} | {stack} | {shared.group(1) if shared else 0} | "
                  f"{len(sass.get(name, []))} |")


if __name__ == "__main__":
    main()
