"""Data-parallel training throughput on CPU ranks: fastmlp over MPI (fastmlp.distributed) at 1 and
2 ranks, and PyTorch DistributedDataParallel (gloo) at the same ranks, in the same run.

    python bench/bench_distributed.py                      # MNIST (20,000 rows) if found, else random data
    python bench/bench_distributed.py --ranks 1,2,4 --batch 128,1024 --epochs 3
    python bench/bench_distributed.py --no-torch
    python bench/bench_distributed.py --device cuda --ranks 1,2 --no-torch   # GPU ranks over NCCL (torchrun)

With --device cuda the ranks are started by torchrun (PyTorch's torch.distributed.run) and train on
GPUs over NCCL; one rank runs the data-parallel path alone (init(force=True): the all-reduce inside
the captured step), and more ranks than GPUs share them (NCCL >= 2.30 with
NCCL_MULTI_RANK_GPU_ENABLE=1, which this sets; older NCCLs refuse two ranks on one GPU).

Each configuration runs as `mpiexec -n W python bench_distributed.py --worker ...`: every rank holds
the data, trains 784-512-512-10 ReLU with Adam on its slice of each global batch, and rank 0
reports the median epoch of epochs 2..N (samples/s over the global rows) and, for fastmlp, the
all-reduce's share of the epoch (time inside the collectives, waiting for the other ranks
included, from fm.distributed.collective_stats()). Ranks split the machine's cores (each gets
cores / W threads). Prints one JSON document. PyTorch ranks use torch.distributed's gloo backend
(its CPU all-reduce) and DDP's gradient averaging: the same global batch and update.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HIDDEN = (512, 512)
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def load(rows, data_dir):
    try:
        import fastmlp as fm

        (x, y), _ = fm.datasets.load_mnist(data_dir)
        source = "mnist"
    except Exception:  # no MNIST files: random data of MNIST's shape (throughput does not depend on it)
        rng = np.random.default_rng(0)
        x, y = rng.random((rows, 784)), rng.integers(0, 10, rows)
        source = "random"
    return np.ascontiguousarray(x[:rows], dtype=np.float32), np.asarray(y[:rows], dtype=np.int64), source


def mpi_rank_size():
    for r, s in (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("RANK", "WORLD_SIZE")):
        if r in os.environ:
            return int(os.environ[r]), int(os.environ[s])
    return 0, 1


def worker_fastmlp(args):
    import fastmlp as fm

    gpu = args.device == "cuda"
    if gpu:  # ranks beyond the GPUs share them (a benchmark of 2 ranks on one GPU)
        gpus = fm.build_info()["cuda_devices"].count("cuda:")
        os.environ["LOCAL_RANK"] = str(int(os.environ["LOCAL_RANK"]) % max(gpus, 1))
    fm.distributed.init(force=gpu)
    x, y, source = load(args.rows, args.data)
    model = fm.Sequential([fm.Dense(HIDDEN[0], activation="relu", input_dim=784),
                           fm.Dense(HIDDEN[1], activation="relu"), fm.Dense(10, activation="softmax")], seed=0)
    model.compile(optimizer=fm.optimizers.Adam(lr=1e-3), loss="sparse_categorical_crossentropy",
                  device="cuda" if gpu else "cpu")
    device = model._engine.device if gpu else "cpu"  # whose communicator sums the gradients
    times, shares = [], []

    class Timer(fm.callbacks.Callback):  # one fit: rank 0's weights are broadcast once, as users run it
        def on_epoch_begin(self, epoch, logs=None):
            self.start = (time.perf_counter(), fm.distributed.collective_stats(device)["seconds"])

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.start[0]
            times.append(seconds)
            shares.append((fm.distributed.collective_stats(device)["seconds"] - self.start[1]) / seconds)

    model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0, callbacks=[Timer()])
    out = {"seconds": times, "allreduce_share": shares, "threads": fm.get_num_threads(),
           "params": model.count_params(), "data": source}
    if gpu:  # a GPU's share is the host's wait for each step's sum (the step itself is queued)
        out["device"] = device
        out["gpu"] = fm.build_info()["cuda_devices"]
        out["nccl"] = fm._core.nccl_library(fm.distributed._nccl_library())[0]
    return out


def worker_torch(args):
    import torch
    import torch.distributed as dist

    rank, size = mpi_rank_size()
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, cores // size))
    if size > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=size)
    x, y, source = load(args.rows, args.data)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(784, HIDDEN[0]), torch.nn.ReLU(), torch.nn.Linear(*HIDDEN),
                              torch.nn.ReLU(), torch.nn.Linear(HIDDEN[1], 10))
    model = torch.nn.parallel.DistributedDataParallel(net) if size > 1 else net
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    n, bs = len(x), args.batch_size
    times = []
    for epoch in range(args.epochs):
        g = torch.Generator().manual_seed(epoch)
        perm = torch.randperm(n, generator=g)
        t0 = time.perf_counter()
        for first in range(0, n, bs):
            rows = min(bs, n - first)
            mine = perm[first + rows * rank // size:first + rows * (rank + 1) // size]
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(xt[mine]), yt[mine])
            loss.backward()  # DDP averages the ranks' gradients here
            opt.step()
        times.append(time.perf_counter() - t0)
    if size > 1:
        dist.destroy_process_group()
    return {"seconds": times, "threads": torch.get_num_threads(), "torch": torch.__version__, "data": source}


def find_mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")  # the mpich wheel's
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def run(framework, ranks, batch, args):
    python = args.torch_python if framework == "torch" else sys.executable
    worker = [__file__, "--worker", framework, "--batch-size", str(batch), "--rows", str(args.rows), "--epochs",
              str(args.epochs), "--data", str(args.data), "--port", str(29500 + ranks), "--device", args.device]
    if args.device == "cuda":
        cmd = [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)] + worker
    else:
        cmd = [find_mpiexec(), "-n", str(ranks), python] + worker
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
               NCCL_MULTI_RANK_GPU_ENABLE="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout)[-2000:]}
    r = json.loads(p.stdout.strip().splitlines()[-1])
    median = statistics.median(r["seconds"][1:] or r["seconds"])
    out = {"ranks": ranks, "batch": batch, "median_epoch_s": round(median, 4),
           "samples_per_s": round(args.rows / median, 1), "threads_per_rank": r["threads"], "data": r["data"]}
    if "allreduce_share" in r:
        out["allreduce_share"] = round(statistics.median(r["allreduce_share"][1:] or r["allreduce_share"]), 4)
        out["params"] = r["params"]
        steps = -(-args.rows // batch)
        out["allreduce_ms_per_step"] = round(1e3 * out["allreduce_share"] * median / steps, 4)
        out["step_ms"] = round(1e3 * median / steps, 4)
    for key in ("torch", "device", "gpu", "nccl"):
        if key in r:
            out[key] = r[key]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--batch", default="128,1024", help="global batch sizes")
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--torch-python", default=sys.executable, help="a Python with torch (and mpi4py not needed)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: fastmlp's GPU ranks over NCCL, started by torchrun (PyTorch's DDP is not run)")
    ap.add_argument("--worker", choices=("fastmlp", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=29500, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        result = (worker_fastmlp if args.worker == "fastmlp" else worker_torch)(args)
        if mpi_rank_size()[0] == 0:
            print(json.dumps(result))
        return
    if args.device == "cpu" and find_mpiexec() is None:
        raise SystemExit("needs mpiexec and mpi4py (pip install mpi4py mpich)")
    frameworks = ["fastmlp"]
    if not args.no_torch and args.device == "cpu":
        probe = subprocess.run([args.torch_python, "-c", "import torch"], capture_output=True)
        if probe.returncode == 0:
            frameworks.append("torch")
    results = []
    for batch in (int(b) for b in args.batch.split(",")):
        for ranks in (int(r) for r in args.ranks.split(",")):
            for fw in frameworks:
                results.append({"framework": fw, **run(fw, ranks, batch, args)})
                print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                  "python": platform.python_version(), "device": args.device},
                      "model": f"784-{HIDDEN[0]}-{HIDDEN[1]}-10 relu, Adam", "rows": args.rows,
                      "epochs": args.epochs, "results": results}, indent=1))


if __name__ == "__main__":
    main()
