"""MNIST training throughput: fastmlp vs PyTorch in the same process, same machine, same threads.

    python bench/bench_mnist.py                       # CPU, 784-512-512-10 ReLU, Adam, batch 128
    python bench/bench_mnist.py --device cuda --config all --precision float32,tf32,bf16
    python bench/bench_mnist.py --data /path/to/mnist --epochs 5 --threads 2
    python bench/bench_mnist.py --config keras_mnist_mlp     # Keras's mnist_mlp: Dropout, RMSprop, 20 epochs

Prints one JSON document: per framework and config the seconds of every epoch, the median
of epochs 2..N (the first includes warm-up: graph capture, cuBLAS heuristics, allocation),
samples/s at that median and test accuracy after the last epoch. PyTorch runs eagerly with
its own fastest Adam (fused on CUDA, foreach on CPU), data already in device memory.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

CONFIGS = {
    # name: (hidden sizes, activation, batch size)
    "mlp512": ((512, 512), "relu", 128),
    "keras_demo": ((100,), "sigmoid", 100),
    "small_b1024": ((64, 64, 64), "relu", 1024),
    "wide4096": ((4096, 4096), "relu", 4096),
    # Keras's examples/mnist_mlp.py: Dropout(0.2) after each hidden layer, RMSprop(lr=1e-3, rho=0.9)
    "keras_mnist_mlp": ((512, 512), "relu", 128),
}
# Settings beyond the table (default: no dropout, Adam(lr=1e-3), the --epochs given).
EXTRAS = {"keras_mnist_mlp": {"dropout": 0.2, "optimizer": ("rmsprop", 1e-3, 0.9), "epochs": 20}}


def extras(cfg):
    return {"dropout": 0.0, "optimizer": ("adam", 1e-3, None), "epochs": None, **EXTRAS.get(cfg, {})}
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def load_data(path):
    import fastmlp as fm

    (x, y), (xt, yt) = fm.datasets.load_mnist(path)
    return x.astype(np.float32), y.astype(np.int64), xt.astype(np.float32), yt.astype(np.int64)


class EpochTimer:
    """fit callback recording wall-clock seconds per epoch (train_epoch returns after a sync)."""

    def __init__(self):
        import fastmlp as fm

        self.cb = type("Timer", (fm.callbacks.Callback,), {
            "on_epoch_begin": lambda s, e, logs=None: setattr(s, "t0", time.perf_counter()),
            "on_epoch_end": lambda s, e, logs=None: s.times.append(time.perf_counter() - s.t0),
        })()
        self.cb.times = []


def run_fastmlp(cfg, data, device, precision, epochs, seed, data_budget=None):
    import fastmlp as fm

    hidden, act, bs = CONFIGS[cfg]
    ex = extras(cfg)
    x, y, xt, yt = data
    layers, fan_in = [], 784
    for h in hidden:
        layers.append(fm.Dense(h, activation=act, input_dim=fan_in if not layers else None))
        if ex["dropout"]:
            layers.append(fm.Dropout(ex["dropout"]))
        fan_in = h
    model = fm.Sequential(layers + [fm.Dense(10, activation="softmax")], seed=seed)
    name, lr, alpha = ex["optimizer"]
    opt = fm.optimizers.RMSprop(lr=lr, alpha=alpha) if name == "rmsprop" else fm.optimizers.Adam(lr=lr)
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], device=device, precision=precision)
    model.data_budget = data_budget
    timer = EpochTimer()
    train = model.upload(x, y)  # streamed when over the data budget
    model.fit(train, epochs=epochs, batch_size=bs, verbose=0, callbacks=[timer.cb])
    result = summarize(timer.cb.times, len(x), model.evaluate(xt, yt)["accuracy"], model.device)
    result["streamed"] = train.streamed
    return result


def run_torch(cfg, data, device, precision, epochs, seed, compile_mode=None):
    import torch
    import torch.nn.functional as F

    hidden, act, bs = CONFIGS[cfg]
    ex = extras(cfg)
    torch.manual_seed(seed)
    dev = torch.device("cuda" if device.startswith("cuda") else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    acts = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh}
    mods, fan_in = [], 784
    for h in hidden:
        mods += [torch.nn.Linear(fan_in, h), acts[act]()] + ([torch.nn.Dropout(ex["dropout"])] if ex["dropout"] else [])
        fan_in = h
    model = torch.nn.Sequential(*mods, torch.nn.Linear(fan_in, 10)).to(dev)
    name, lr, alpha = ex["optimizer"]
    fast = {"fused": True} if dev.type == "cuda" and name == "adam" else {"foreach": True}
    opt = (torch.optim.RMSprop(model.parameters(), lr=lr, alpha=alpha, foreach=True) if name == "rmsprop"
           else torch.optim.Adam(model.parameters(), lr=lr, **fast))
    x, y, xt, yt = (torch.from_numpy(a).to(dev) for a in data)
    autocast = precision == "bf16" and dev.type == "cuda"

    def step(xb, yb):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if compile_mode:
        step = torch.compile(step, mode=compile_mode)
    times, n = [], x.shape[0]
    model.train()
    for _ in range(epochs):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=dev)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            step(x[idx], y[idx])
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    return summarize(times, n, acc, str(dev))


def summarize(times, n, accuracy, device):
    steady = times[1:] if len(times) > 1 else times
    med = statistics.median(steady)
    return {"device": device, "epoch_seconds": [round(t, 5) for t in times], "median_epoch_seconds": med,
            "samples_per_second": n / med, "test_accuracy": accuracy}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("FASTMLP_DATA", str(DEFAULT_DATA)))
    p.add_argument("--device", default="cpu")
    p.add_argument("--config", default="mlp512", help=f"comma list of {sorted(CONFIGS)} or 'all'")
    p.add_argument("--precision", default="float32", help="comma list of float32,tf32,bf16 (CUDA)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--torch-compile", default=None, help="also time torch.compile with this mode")
    p.add_argument("--data-budget", type=int, default=None,
                   help="bytes of backend memory for the training set; less streams it from host memory")
    args = p.parse_args(argv)

    import fastmlp as fm

    if args.device == "cpu":
        fm.set_num_threads(args.threads)
    configs = sorted(CONFIGS) if args.config == "all" else args.config.split(",")
    data = load_data(args.data)
    from bench_cpu import kernel_environment  # the variables that pick BLAS kernels and threads

    report = {"machine": platform.node(), "processor": platform.processor(), "threads": args.threads,
              "environment": kernel_environment(), "fastmlp": fm.build_info(), "results": []}
    try:
        import torch

        report["torch_version"] = torch.__version__
        if args.device == "cpu":
            torch.set_num_threads(args.threads)
        have_torch = not args.no_torch
    except ImportError:
        have_torch = False
        report["torch_version"] = None
    for cfg in configs:
        for precision in args.precision.split(","):
            epochs = extras(cfg)["epochs"] or args.epochs
            row = {"config": cfg, "layers": CONFIGS[cfg], **{k: v for k, v in extras(cfg).items() if k != "epochs"},
                   "epochs": epochs, "precision": precision}
            row["fastmlp"] = run_fastmlp(cfg, data, args.device, precision, epochs, args.seed, args.data_budget)
            if have_torch:
                row["pytorch"] = run_torch(cfg, data, args.device, precision, epochs, args.seed)
                row["speedup_vs_pytorch"] = row["pytorch"]["median_epoch_seconds"] / row["fastmlp"]["median_epoch_seconds"]
                if args.torch_compile:
                    row["pytorch_compile"] = run_torch(cfg, data, args.device, precision, epochs, args.seed,
                                                       args.torch_compile)
            else:
                row["pytorch"] = "not importable"
            report["results"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
