"""Full-batch L-BFGS: fastmlp's LBFGS against scikit-learn's MLPClassifier(solver="lbfgs").

    python bench/bench_lbfgs.py                 # digits and breast_cancer, 5 repeats
    python bench/bench_lbfgs.py --repeats 3 --threads 2

The same network on both sides: one hidden layer of 100 ReLU units, softmax (or logistic)
output, scikit-learn's penalty alpha/2 * ||W||^2 / n_samples on the kernels (alpha = 1e-4), 200
iterations at most, a 75/25 stratified split with standardized features. scikit-learn runs
scipy's L-BFGS-B (history 10, its own line search); fastmlp runs torch.optim.LBFGS's iteration
(history 10, strong-Wolfe line search) natively, one `step` of max_iter=200. Prints one JSON
document: per data set and library the median wall time of the fit, the final training loss and
the test accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np


def load(name):
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    scaler = StandardScaler().fit(xtr)
    return scaler.transform(xtr), scaler.transform(xte), ytr, yte


def run_sklearn(data, seed, alpha, max_iter):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    xtr, xte, ytr, yte = data
    clf = MLPClassifier(hidden_layer_sizes=(100,), solver="lbfgs", alpha=alpha, max_iter=max_iter, random_state=seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(xtr, ytr)
    seconds = time.perf_counter() - t0
    return seconds, float(clf.loss_), float(clf.score(xte, yte)), int(clf.n_iter_)


def run_fastmlp(data, seed, alpha, max_iter):
    import fastmlp as fm

    xtr, xte, ytr, yte = data
    n_classes = int(ytr.max()) + 1
    l2 = alpha / (2 * xtr.shape[0])  # scikit-learn's alpha/2 ||W||^2 / n, in Keras's l2 * sum(W^2)
    model = fm.Sequential([fm.Dense(100, activation="relu", input_dim=xtr.shape[1],
                                    kernel_regularizer=fm.regularizers.L2(l2)),
                           fm.Dense(n_classes, activation="softmax", kernel_regularizer=fm.regularizers.L2(l2))],
                          seed=seed)
    opt = fm.optimizers.LBFGS(max_iter=max_iter, max_eval=int(max_iter * 1.25), history_size=10,
                              tolerance_grad=1e-5, tolerance_change=1e-9, line_search_fn="strong_wolfe")
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu",
                  dtype="float64")
    x32, y64 = xtr.astype(np.float64), ytr.astype(np.int64)
    t0 = time.perf_counter()
    model.fit(x32, y64, epochs=1, verbose=0)
    seconds = time.perf_counter() - t0
    loss = model.evaluate(x32, y64)["loss"]
    acc = float((model.predict(xte.astype(np.float64)).argmax(1) == yte).mean())
    return seconds, float(loss), acc, None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="digits,breast_cancer")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--alpha", type=float, default=1e-4)
    p.add_argument("--max-iter", type=int, default=200)
    args = p.parse_args(argv)
    import fastmlp as fm

    fm.set_num_threads(args.threads)
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "threads": args.threads, "python": sys.version.split()[0]},
           "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "results": {}}
    for name in args.datasets.split(","):
        data = load(name)
        row = {}
        for lib, fn in (("sklearn", run_sklearn), ("fastmlp", run_fastmlp)):
            runs = [fn(data, seed, args.alpha, args.max_iter) for seed in range(args.repeats)]
            row[lib] = {"median_seconds": statistics.median(r[0] for r in runs),
                        "median_train_loss": statistics.median(r[1] for r in runs),
                        "median_test_accuracy": statistics.median(r[2] for r in runs),
                        "seconds": [round(r[0], 4) for r in runs], "test_accuracy": [round(r[2], 4) for r in runs]}
            if runs[0][3] is not None:
                row[lib]["n_iter"] = [r[3] for r in runs]
        row["speedup"] = row["sklearn"]["median_seconds"] / row["fastmlp"]["median_seconds"]
        out["results"][name] = row
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
