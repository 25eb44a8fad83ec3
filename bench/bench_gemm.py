"""Single-thread SGEMM rate of the BLAS libraries a user can install, at the shapes of a training step.

    python bench/bench_gemm.py                      # every library found, one after the other
    python bench/bench_gemm.py --concurrent 2       # also scipy-openblas32 on every core at once
    python bench/bench_gemm.py --mkl /path/to/lib   # a folder holding libmkl_rt.so.* (the `mkl` wheel's lib/)

Why: fastmlp's CPU backend keeps its BLAS on one thread and splits each GEMM over its own pool
(csrc/cpu/blas.cpp), so what matters is one thread's rate at the per-thread shapes, and whether
the cores reach it all at once. Issue 11 asks whether another BLAS that installs from a package
beats OpenBLAS at these skinny shapes.

Libraries (each in its own subprocess, one thread; a library that is not installed is reported
as missing): scipy-openblas32 (fastmlp's default BLAS), MKL through libmkl_rt with
MKL_THREADING_LAYER=SEQUENTIAL (the `mkl` wheel; pass --mkl or have it in sys.prefix/lib),
cython-blis (`pip install blis`), and PyTorch's torch.mm with torch.set_num_threads(1).

Shapes: each GEMM of a 784-512-512-10 step at batch 128 and at batch 2048 as fastmlp hands half
of it to each of 2 threads (row-major, C = op(A) op(B)), and 1024^3. Medians of 30 timings of 5
calls each. Prints one JSON document on stdout.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

# name, transpose A, transpose B, m, n, k (row-major C[m, n] = op(A) op(B)), as blas.cpp splits them
SHAPES = [
    ("b128 forward, layer 1 (columns split)", False, False, 128, 256, 784),
    ("b128 forward, layer 2 (columns split)", False, False, 128, 256, 512),
    ("b128 weight gradient, layer 1 (rows split)", True, False, 392, 512, 128),
    ("b128 weight gradient, layer 2 (columns split)", True, False, 512, 256, 128),
    ("b128 input gradient, layer 2 (columns split)", False, True, 128, 256, 512),
    ("b2048 forward, layer 1 (rows split)", False, False, 1024, 512, 784),
    ("b2048 weight gradient, layer 1 (rows split)", True, False, 392, 512, 2048),
    ("square 1024", False, False, 1024, 1024, 1024),
]
LIBRARIES = ("scipy-openblas32", "mkl", "blis", "torch")
CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS = 101, 111, 112


def cblas_gemm(path: str, symbol: str):
    lib = ctypes.CDLL(path)
    fn = getattr(lib, symbol)
    f, i, p = ctypes.c_float, ctypes.c_int, ctypes.c_void_p
    fn.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
    fn.restype = None

    def gemm(ta, tb, m, n, k, A, B, C):
        fn(CBLAS_ROW_MAJOR, CBLAS_TRANS if ta else CBLAS_NO_TRANS, CBLAS_TRANS if tb else CBLAS_NO_TRANS, m, n, k,
           1.0, A.ctypes.data, m if ta else k, B.ctypes.data, k if tb else n, 0.0, C.ctypes.data, n)

    return lib, gemm


def load(library: str, mkl_dir: str | None):
    """A gemm(ta, tb, m, n, k, A, B, C) on one thread, and a description of the library."""
    if library == "scipy-openblas32":
        import scipy_openblas32

        path = os.path.join(scipy_openblas32.get_lib_dir(), f"lib{scipy_openblas32.get_library()}.so")
        lib, gemm = cblas_gemm(path, "scipy_cblas_sgemm")
        lib.scipy_openblas_set_num_threads(1)
        lib.scipy_openblas_get_config.restype = ctypes.c_char_p
        return gemm, lib.scipy_openblas_get_config().decode()
    if library == "mkl":
        dirs = [mkl_dir] if mkl_dir else [os.path.join(sys.prefix, "lib")]
        found = sorted(f for d in dirs for f in glob.glob(os.path.join(d, "libmkl_rt.so*")))
        if not found:
            raise ImportError(f"no libmkl_rt.so in {dirs}")
        os.environ["MKL_THREADING_LAYER"] = "SEQUENTIAL"  # read when libmkl_rt loads
        _, gemm = cblas_gemm(found[0], "cblas_sgemm")
        return gemm, found[0]
    if library == "blis":
        import blis
        import blis.py

        def gemm(ta, tb, m, n, k, A, B, C):
            blis.py.gemm(A, B, out=C, trans1=ta, trans2=tb, alpha=1.0, beta=0.0)

        return gemm, f"cython-blis {getattr(blis, '__version__', '')}".strip()
    if library == "torch":
        import torch

        torch.set_num_threads(1)

        def gemm(ta, tb, m, n, k, A, B, C):
            torch.mm(A.t() if ta else A, B.t() if tb else B, out=C)

        return gemm, f"torch {torch.__version__}, MKL available: {torch.backends.mkl.is_available()}"
    raise ValueError(library)


def worker(library: str, mkl_dir: str | None) -> dict:
    try:
        gemm, description = load(library, mkl_dir)
    except (ImportError, OSError, AttributeError) as e:
        return {"library": library, "missing": str(e)}
    rng = np.random.default_rng(0)
    rates = {}
    for name, ta, tb, m, n, k in SHAPES:
        A = rng.random((k, m) if ta else (m, k), dtype=np.float32)
        B = rng.random((n, k) if tb else (k, n), dtype=np.float32)
        C = np.zeros((m, n), np.float32)
        if library == "torch":
            import torch

            A, B, C = torch.from_numpy(A), torch.from_numpy(B), torch.from_numpy(C)
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            for _ in range(5):
                gemm(ta, tb, m, n, k, A, B, C)
            times.append((time.perf_counter() - t0) / 5)
        median = float(np.median(times))
        rates[name] = {"shape_mnk": [m, n, k], "transposes": [ta, tb], "median_us": round(median * 1e6, 1),
                       "gflops": round(2.0 * m * n * k / median * 1e-9, 1)}
    return {"library": library, "description": description, "cores_allowed": sorted(os.sched_getaffinity(0)),
            "shapes": rates}


def run_workers(library: str, mkl_dir: str | None, copies: int) -> list[dict]:
    """`copies` workers at once, each pinned to its own core."""
    cmd = [sys.executable, __file__, "--worker", library] + (["--mkl", mkl_dir] if mkl_dir else [])
    cores = sorted(os.sched_getaffinity(0))
    procs = []
    for i in range(copies):
        core = cores[i % len(cores)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                      preexec_fn=lambda c=core: os.sched_setaffinity(0, {c})))
    return [json.loads(p.communicate()[0]) for p in procs]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", default=",".join(LIBRARIES), help=f"comma list of {', '.join(LIBRARIES)}")
    p.add_argument("--mkl", default=None, help="folder with libmkl_rt.so* (default: sys.prefix/lib)")
    p.add_argument("--concurrent", type=int, default=0,
                   help="also run this many scipy-openblas32 workers at once, one per core")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.mkl)))
        return
    from bench_cpu import cpu_model, kernel_environment  # this folder's CPU benchmark: the same description

    report = {"machine": {"cpu": cpu_model(), "cpus_usable": len(os.sched_getaffinity(0)),
                          "platform": platform.platform(), "numpy": np.__version__,
                          "environment": kernel_environment()},
              "libraries": [], "concurrent_openblas": None}
    for library in args.library.split(","):
        print(f"[bench_gemm] {library}", file=sys.stderr, flush=True)
        report["libraries"].append(run_workers(library, args.mkl, 1)[0])
    if args.concurrent > 1:
        print(f"[bench_gemm] scipy-openblas32 x {args.concurrent} at once", file=sys.stderr, flush=True)
        report["concurrent_openblas"] = run_workers("scipy-openblas32", None, args.concurrent)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
