"""Batch normalization against vanishing gradients: a deep sigmoid net on MNIST, with and without it.

    python bench/bench_batchnorm.py                          # 10 sigmoid layers of 256, SGD, 5 epochs
    python bench/bench_batchnorm.py --plot bn_curves.png --epochs 10 --rows 60000

Ten Dense(256, sigmoid) layers trained by plain SGD barely move: each sigmoid scales the gradient
by at most 1/4, so the first layers get almost none of it. The same net with
Dense(256) -> BatchNormalization() -> Activation("sigmoid") keeps every layer's input centred
and scaled, so the gradients reach the first layers and it trains. Prints one JSON document with
both learning curves (training loss and test accuracy per epoch) and seconds per epoch;
--plot also draws them (matplotlib).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mnist import DEFAULT_DATA, load_data  # noqa: E402


def build(batch_norm: bool, depth: int, width: int, seed: int):
    import fastmlp as fm

    layers = []
    for i in range(depth):
        first = {"input_dim": 784} if i == 0 else {}
        if batch_norm:
            layers += [fm.Dense(width, **first), fm.BatchNormalization(), fm.Activation("sigmoid")]
        else:
            layers.append(fm.Dense(width, "sigmoid", **first))
    return fm.Sequential(layers + [fm.Dense(10, "softmax")], seed=seed)


def curve(batch_norm, data, args):
    import fastmlp as fm

    x, y, xt, yt = data
    model = build(batch_norm, args.depth, args.width, args.seed)
    model.compile(fm.optimizers.SGD(lr=args.lr), "sparse_categorical_crossentropy", metrics=["accuracy"],
                  device=args.device)
    losses, accuracies, seconds = [], [], []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        history = model.fit(x, y, epochs=1, batch_size=args.batch_size, verbose=0)
        seconds.append(time.perf_counter() - t0)
        losses.append(history.history["loss"][-1])
        accuracies.append(model.evaluate(xt, yt)["accuracy"])
    return {"batch_norm": batch_norm, "train_loss": losses, "test_accuracy": accuracies,
            "epoch_seconds": [round(s, 4) for s in seconds], "params": model.count_params()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("FASTMLP_DATA", str(DEFAULT_DATA)))
    p.add_argument("--device", default="cpu")
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--rows", type=int, default=20000, help="training rows used (of 60,000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, help="write both curves to this PNG")
    args = p.parse_args(argv)

    import fastmlp as fm

    x, y, xt, yt = load_data(args.data)
    data = (x[:args.rows], y[:args.rows], xt, yt)
    runs = [curve(False, data, args), curve(True, data, args)]
    report = {"machine": platform.node(), "processor": platform.processor(), "fastmlp": fm.build_info()["version"],
              "net": f"{args.depth} x Dense({args.width}, sigmoid), SGD(lr={args.lr}), batch {args.batch_size}, "
                     f"{args.rows} rows", "runs": runs}
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for run in runs:
            label = "with BatchNormalization" if run["batch_norm"] else "plain sigmoid"
            epochs = range(1, len(run["train_loss"]) + 1)
            ax1.plot(epochs, run["train_loss"], marker="o", label=label)
            ax2.plot(epochs, run["test_accuracy"], marker="o", label=label)
        ax1.set(xlabel="epoch", ylabel="training loss", title=report["net"])
        ax2.set(xlabel="epoch", ylabel="test accuracy")
        ax1.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        report["plot"] = args.plot
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
