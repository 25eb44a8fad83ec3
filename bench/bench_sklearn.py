"""fastmlp's MLPClassifier against scikit-learn's, as a drop-in: the same parameters on both.

    python bench/bench_sklearn.py                        # digits and a 20,000-row MNIST slice
    python bench/bench_sklearn.py --repeats 5 --threads 2 --mnist-rows 20000

Cases (each: scikit-learn's MLPClassifier and fastmlp's, identical arguments, random_state=0):
  digits       load_digits (1,797 x 64, standardized), hidden (100,), adam, 50 epochs, and
               solver="lbfgs" (max_iter=200)
  mnist20k     the first --mnist-rows training images of MNIST (in [0, 1]), hidden (256,), adam,
               batch 200 ("auto"), 10 epochs (n_iter_no_change large so both run them all)
Both run float64 (the input's dtype; fastmlp then trains its CPU float64 engine) and float32 for
fastmlp (X.astype(np.float32)). Prints one JSON document: per case and library the median fit time
over --repeats, the final training loss (scikit-learn's units on both sides) and the test accuracy.
MNIST is read from ../shared/data/mnist (or --data); without it that case is skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def digits():
    # bench_lbfgs's split: 75/25 stratified, standardized on the training part
    from bench_lbfgs import load

    return load("digits")


def mnist(path, rows):
    import fastmlp as fm

    (x, y), (xt, yt) = fm.datasets.load_mnist(str(path))  # pixels already scaled to [0, 1]
    return x[:rows].astype(np.float64), xt.astype(np.float64), y[:rows], yt


def fit_once(cls, params, data, dtype):
    from sklearn.exceptions import ConvergenceWarning

    xtr, xte, ytr, yte = data
    xtr, xte = xtr.astype(dtype), xte.astype(dtype)
    clf = cls(**params)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(xtr, ytr)
    seconds = time.perf_counter() - t0
    return seconds, float(clf.loss_), float(clf.score(xte, yte)), int(clf.n_iter_)


def measure(cls, params, data, dtype, repeats):
    runs = [fit_once(cls, params, data, dtype) for _ in range(repeats)]
    return {"seconds_median": statistics.median(r[0] for r in runs), "seconds_all": [round(r[0], 4) for r in runs],
            "final_loss": runs[-1][1], "test_accuracy": runs[-1][2], "n_iter": runs[-1][3]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="fastmlp threads (default: all cores)")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--mnist-rows", type=int, default=20000)
    args = ap.parse_args()

    import sklearn
    from sklearn.neural_network import MLPClassifier as SkMLP

    import fastmlp as fm

    if args.threads:
        fm.set_num_threads(args.threads)
    cases = {"digits_adam": (digits(), dict(hidden_layer_sizes=(100,), max_iter=50, random_state=0)),
             "digits_lbfgs": (None, dict(hidden_layer_sizes=(100,), solver="lbfgs", max_iter=200, random_state=0))}
    cases["digits_lbfgs"] = (cases["digits_adam"][0], cases["digits_lbfgs"][1])
    if Path(args.data).is_dir():
        cases["mnist20k_adam"] = (mnist(args.data, args.mnist_rows),
                                  dict(hidden_layer_sizes=(256,), max_iter=10, n_iter_no_change=1000, random_state=0))
    results = {}
    for name, (data, params) in cases.items():
        row = {"scikit-learn float64": measure(SkMLP, params, data, np.float64, args.repeats),
               "fastmlp float64": measure(fm.MLPClassifier, dict(params, device="cpu"), data, np.float64,
                                          args.repeats),
               "fastmlp float32": measure(fm.MLPClassifier, dict(params, device="cpu"), data, np.float32,
                                          args.repeats)}
        base = row["scikit-learn float64"]["seconds_median"]
        for k in ("fastmlp float64", "fastmlp float32"):
            row[k]["speedup_vs_sklearn"] = round(base / row[k]["seconds_median"], 2)
        results[name] = row
    print(json.dumps({"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                  "cpus": os.cpu_count(), "fastmlp_threads": fm.get_num_threads()},
                      "versions": {"scikit-learn": sklearn.__version__, "numpy": np.__version__},
                      "repeats": args.repeats, "results": results}, indent=1))


if __name__ == "__main__":
    main()
