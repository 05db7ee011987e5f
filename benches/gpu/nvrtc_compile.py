#!/usr/bin/env python3
"""NVRTC compile time of our CUDA kernel files, as `Gpu::function` compiles them on a GPU's first use (PTX for
`--arch`, C++17, the CUDA headers of the nvidia wheels): each file once, attention.cu per element type and head
size, w4a16.cu + w4a16_sm90.cu without a product kernel and with one of each kind. Needs no GPU, only NVRTC from
the `nvidia-cuda-nvrtc` wheel (torch's CUDA 13 wheels bring it; the test venv has it):

    source target/olive-env.sh && "$OLIVE_TEST_VENV/bin/python" benches/gpu/nvrtc_compile.py

`--nvrtc-version 13.0` compiles with that NVRTC instead (its wheel fetched from PyPI once into
~/.cache/olive-rs/nvrtc-<version>): the GPU machine's CUDA 13.0, which refuses code a newer NVRTC takes (a generic
lambda in a device function, 2026-11-29). Run it on changed kernel code before a GPU call: a compile error exits
non-zero with NVRTC's log.
"""

import argparse
import ctypes
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def nvidia_root() -> Path:
    import nvidia  # the namespace package of the nvidia-* wheels

    for base in nvidia.__path__:
        if (Path(base) / "cu13" / "include" / "cuda_fp16.h").is_file():
            return Path(base) / "cu13"
    sys.exit("nvrtc_compile.py: no CUDA 13 nvidia wheels (nvidia/cu13) in this Python")


def load_nvrtc(root: Path, version: str | None = None):
    """libnvrtc of the CUDA wheels at `root` (nvidia_root()), or of `nvidia-cuda-nvrtc==<version>.*` from PyPI."""
    if version is None:
        return ctypes.CDLL(str(next((root / "lib").glob("libnvrtc.so.*"))))
    cache = Path.home() / ".cache" / "olive-rs" / f"nvrtc-{version}"
    if not list(cache.glob("x/nvidia/*/lib/libnvrtc.so.*")):
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        f"nvidia-cuda-nvrtc=={version}.*", "-d", str(cache)], check=True)
        with zipfile.ZipFile(next(cache.glob("nvidia_cuda_nvrtc-*.whl"))) as z:
            z.extractall(cache / "x")
    lib = next(cache.glob("x/nvidia/*/lib/libnvrtc.so.*")).parent
    # libnvrtc opens its builtins library by name: load that first, globally.
    ctypes.CDLL(str(next(lib.glob("libnvrtc-builtins.so.*"))), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(str(next(lib.glob("libnvrtc.so.*"))))


def compile_program(nvrtc, include: Path, arch: str, source: bytes, defines: list[str]):
    """`source` compiled by NVRTC for `arch` as `Gpu::function` does: (program, seconds, log). The log is None on
    success; the caller destroys the program (nvrtcDestroyProgram)."""
    prog = ctypes.c_void_p()
    if nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source, b"k.cu", 0, None, None) != 0:
        sys.exit("nvrtcCreateProgram failed")
    opts = [f"--gpu-architecture={arch}", "--std=c++17", f"-I{include}", f"-I{include / 'cccl'}"] + defines
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    t0 = time.perf_counter()
    rc = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
    seconds = time.perf_counter() - t0
    if rc == 0:
        return prog, seconds, None
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    return prog, seconds, log.value.decode()


def compile_seconds(nvrtc, include: Path, arch: str, source: bytes, defines: list[str]) -> float | str:
    """Seconds NVRTC took, or why it could not compile here."""
    prog, seconds, log = compile_program(nvrtc, include, arch, source, defines)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    if log is not None:
        # The wheels' headers lack a toolkit's crt/ folder (mma.h's): such a file is timed on a GPU machine only.
        if "cannot open source file" in log:
            return "needs a CUDA toolkit's headers"
        sys.exit(f"compile failed ({' '.join(defines)}):\n{log[:3000]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="sm_90a", help="NVRTC --gpu-architecture (sm_90a: H100/H200)")
    ap.add_argument("--nvrtc-version", help="NVRTC of this CUDA version from PyPI (13.0: the GPU machine's)")
    args = ap.parse_args()
    root = nvidia_root()
    nvrtc = load_nvrtc(root, args.nvrtc_version)
    cuda = ROOT / "kernels" / "cuda"
    prelude = (cuda / "prelude.cuh").read_bytes()  # put before every file, as kernels/src/cuda does
    plain = [p for p in sorted(cuda.glob("*.cu")) if p.name not in ("attention.cu", "w4a16.cu", "w4a16_sm90.cu")]
    w4 = prelude + (cuda / "w4a16.cu").read_bytes() + (cuda / "w4a16_sm90.cu").read_bytes()
    jobs = [(p.name, prelude + p.read_bytes(), []) for p in plain]
    jobs += [(f"attention.cu {t} d{d}", prelude + (cuda / "attention.cu").read_bytes(), [f"-DATTN_NAME={t}", f"-DATTN_D={d}"])
             for t in ("bf16",) for d in (64, 96, 128)]
    jobs += [
        ("w4a16.cu helpers only", w4, []),
        ("w4a16.cu + W4_MM (GEMV)", w4, ["-DW4_INSTANCE=W4_MM(__nv_bfloat16,bf16,1,1,16,1,1,2,3)"]),
        ("w4a16.cu + W4_MM_NORM (GEMV, fp16)", w4, ["-DW4_INSTANCE=W4_MM_NORM(__half,f16,1,1,8,1,1,1,3)"]),
        ("w4a16.cu + W4_MM_NORM_SWIGLU", w4, ["-DW4_INSTANCE=W4_MM_NORM_SWIGLU(__nv_bfloat16,bf16,2,1,8,1,1,1,3)"]),
        ("w4a16.cu + W4_MMP (pipelined)", w4, ["-DW4_INSTANCE=W4_MMP(__nv_bfloat16,bf16,2,8,4,2,3,1)"]),
        ("w4a16.cu + W4_WS (wgmma)", w4, ["-DW4_INSTANCE=W4_WS(__nv_bfloat16,bf16,2,1,128,4,2,1)"]),
    ]
    print(f"| kernels (NVRTC {args.nvrtc_version or 'of this Python'}, {args.arch}) | seconds |\n| --- | ---: |")
    for name, source, defines in jobs:
        seconds = compile_seconds(nvrtc, root / "include", args.arch, source, defines)
        print(f"| {name} | {seconds if isinstance(seconds, str) else f'{seconds:.2f}'} |")


if __name__ == "__main__":
    main()
