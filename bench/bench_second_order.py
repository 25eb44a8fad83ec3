"""Second-order methods against Adam on a small net: training loss against passes over the data.

    python bench/bench_second_order.py
    python bench/bench_second_order.py --rows 500 --hidden 10 --steps 15

A 4-feature, 3-class problem (labels from a random tanh network, so a small net can fit it),
784-free and small enough for the exact Hessian: 4-hidden-3 with tanh, L2 1e-4, float64, full
batch. Each method runs --steps steps; a "pass" is one forward and backward pass over all rows
(a gradient, a loss, or a Hessian-vector product each count one; Adam's epoch at batch_size=all
rows is one pass). Prints one JSON document: per method the training loss after each step and
the passes used so far, plus the wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np


class PassCounter:
    """Counts the engine's full-batch passes by wrapping the methods the optimizers call."""

    def __init__(self, engine):
        self.engine, self.passes = engine, 0

    def __getattr__(self, name):
        attr = getattr(self.engine, name)
        if name in ("compute_gradients", "training_loss", "hessian_vector_product", "evaluate", "lbfgs_step"):
            def counted(*a, **k):
                out = attr(*a, **k)
                if name == "lbfgs_step":
                    self.passes += out["evaluations"]
                elif name == "hessian_vector_product":  # one R-pass per direction (k rows of v)
                    self.passes += a[1].shape[0] if np.ndim(a[1]) == 2 else 1
                else:
                    self.passes += 1
                return out
            return counted
        return attr


def problem(rows, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    teacher = np.tanh(x @ rng.normal(size=(4, 6))) @ rng.normal(size=(6, 3)) * 2
    return x, teacher.argmax(1)


def run(name, opt, x, y, hidden, steps):
    import fastmlp as fm

    m = fm.Sequential([fm.Dense(hidden, "tanh", input_dim=4, kernel_regularizer=fm.regularizers.L2(1e-4)),
                       fm.Dense(3, "softmax", kernel_regularizer=fm.regularizers.L2(1e-4))], seed=0)
    m.compile(optimizer=opt, loss="sparse_categorical_crossentropy", device="cpu", dtype="float64")
    data, _ = m._data(x, y)
    counter = PassCounter(m._engine)
    losses, passes = [], []
    t0 = time.perf_counter()
    for _ in range(steps):
        if isinstance(opt, fm.optimizers.FullBatchOptimizer):
            opt.step(counter, data)
        else:
            m._engine.train_epoch(data, None, x.shape[0])
            counter.passes += 1
        losses.append(m._engine.training_loss(data))
        passes.append(counter.passes)
    return {"loss": losses, "passes": passes, "seconds": time.perf_counter() - t0, "parameters": m.count_params()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--hidden", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--adam-steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import fastmlp as fm

    x, y = problem(args.rows, args.seed)
    methods = {
        "newton": (fm.optimizers.Newton(), args.steps),
        "hessian_free": (fm.optimizers.HessianFree(cg_iters=20, damping=1e-2), args.steps),
        "lbfgs": (fm.optimizers.LBFGS(max_iter=5, line_search_fn="strong_wolfe"), args.steps),
        "adam": (fm.optimizers.Adam(lr=1e-2), args.adam_steps),
    }
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "python": sys.version.split()[0]},
           "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
           "problem": f"{args.rows} rows, 4-{args.hidden}-3 tanh, L2 1e-4, full batch, float64", "results": {}}
    for name, (opt, steps) in methods.items():
        r = run(name, opt, x, y, args.hidden, steps)
        out["results"][name] = r
    # Adam's loss after as many passes as each second-order method used in all
    adam = out["results"]["adam"]
    for name in ("newton", "hessian_free", "lbfgs"):
        r = out["results"][name]
        k = min(r["passes"][-1], len(adam["loss"])) - 1
        r["adam_loss_after_same_passes"] = adam["loss"][k]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
