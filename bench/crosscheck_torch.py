"""fastmlp's second-order pieces against PyTorch, in float64 (a check run by hand, not in CI:
torch is never a test dependency).

    PYTHONPATH=python /path/to/venv-with-torch/bin/python bench/crosscheck_torch.py

1. fm.hvp against torch.autograd.functional.hvp for every activation x loss pair (48) of a
   4-6-3 network with an L2 penalty: prints the worst relative difference.
2. tests/reference.py's NumPy L-BFGS (the one the native LBFGS is tested against) against
   torch.optim.LBFGS on softmax regression, with and without the strong-Wolfe line search:
   prints the largest weight or loss difference over 4 steps.
Prints one JSON document.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import torch

import fastmlp as fm

torch.set_default_dtype(torch.float64)
F = torch.nn.functional
ROOT = Path(__file__).resolve().parents[1]
ACTS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "elu": lambda z: F.elu(z, 0.7), "relu": F.relu,
        "leaky_relu": lambda z: F.leaky_relu(z, 0.1), "linear": lambda z: z}
FM_ACT = {"elu": fm.activations.ELU(0.7), "leaky_relu": fm.activations.LeakyReLU(0.1)}
LOSSES = ["sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy", "mse:linear",
          "mse:tanh", "mse:sigmoid", "multiclass_hinge:linear", "multiclass_hinge:tanh"]
DEFAULT_OUT = {"sparse_categorical_crossentropy": "softmax", "categorical_crossentropy": "softmax",
               "binary_crossentropy": "sigmoid"}


def torch_loss(loss, out, z, Y):
    if loss == "sparse_categorical_crossentropy":
        return F.cross_entropy(z, Y)
    if loss == "categorical_crossentropy":
        return -(Y * F.log_softmax(z, 1)).sum(1).mean()
    if loss == "binary_crossentropy":
        return F.binary_cross_entropy_with_logits(z, Y)
    o = ACTS[out](z)
    if loss == "mse":
        return ((o - Y) ** 2).mean()
    margins = F.relu(o - o.gather(1, Y.view(-1, 1)) + 1).scatter(1, Y.view(-1, 1), 0.0)
    return margins.sum(1).mean()


def check_hvp(rng):
    worst = 0.0
    for act, name in itertools.product(ACTS, LOSSES):
        loss, _, out = name.partition(":")
        out = out or DEFAULT_OUT[loss]
        m = fm.Sequential([fm.Dense(6, FM_ACT.get(act, act), input_dim=4, kernel_regularizer=fm.regularizers.L2(1e-2)),
                           fm.Dense(3, out)], seed=1)
        m.compile(loss=loss, device="cpu", dtype="float64")
        x = rng.normal(size=(15, 4))
        if loss in ("sparse_categorical_crossentropy", "multiclass_hinge"):
            y = rng.integers(0, 3, 15)
        elif loss == "categorical_crossentropy":
            y = rng.dirichlet(np.ones(3), 15)
        elif loss == "binary_crossentropy":
            y = rng.random((15, 3))
        else:
            y = rng.normal(size=(15, 3))
        weights = m.get_weights()
        v = rng.normal(size=sum(w.size for w in weights))
        X, Y = torch.tensor(x), torch.tensor(y)

        def f(t):
            W1, b1, W2, b2 = t[:24].reshape(4, 6), t[24:30], t[30:48].reshape(6, 3), t[48:51]
            return torch_loss(loss, out, ACTS[act](X @ W1 + b1) @ W2 + b2, Y) + 1e-2 * (W1 ** 2).sum()

        theta = torch.tensor(np.concatenate([w.ravel() for w in weights]))
        want = torch.autograd.functional.hvp(f, theta, torch.tensor(v))[1].numpy()
        got = fm.hvp(m, x, y, v)
        worst = max(worst, float(np.abs(want - got).max() / np.abs(want).max()))
    return {"pairs": len(ACTS) * len(LOSSES), "worst_relative_difference": worst}


def check_lbfgs(rng):
    spec = importlib.util.spec_from_file_location("reference", ROOT / "tests" / "reference.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    X, Y = rng.normal(size=(40, 5)), rng.integers(0, 3, 40)
    w0 = rng.normal(size=18) * 0.3

    def fun(w):
        W, b = w[:15].reshape(5, 3), w[15:]
        z = X @ W + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        dz = p.copy()
        dz[np.arange(40), Y] -= 1
        dz /= 40
        loss = -np.log(p[np.arange(40), Y]).mean() + 1e-2 * (W ** 2).sum()
        return loss, np.concatenate([(X.T @ dz + 2e-2 * W).ravel(), dz.sum(0)])

    out = {}
    for ls, kw in itertools.product((None, "strong_wolfe"), (dict(lr=1.0), dict(lr=0.5, max_iter=7, history_size=3),
                                                             dict(lr=1.0, tolerance_change=1e-4, max_iter=30))):
        w = torch.tensor(w0.copy(), requires_grad=True)
        opt = torch.optim.LBFGS([w], line_search_fn=ls, **kw)
        Xt, Yt = torch.tensor(X), torch.tensor(Y)

        def closure():
            opt.zero_grad()
            W, b = w[:15].reshape(5, 3), w[15:]
            loss = F.cross_entropy(Xt @ W + b, Yt) + 1e-2 * (W ** 2).sum()
            loss.backward()
            return loss

        r, wr, worst = ref.LBFGS(line_search_fn=ls, **kw), w0.copy(), 0.0
        for _ in range(4):
            lt = opt.step(closure).item()
            wr, lr_ = r.step(wr, fun)
            worst = max(worst, abs(lt - lr_), float(np.abs(w.detach().numpy() - wr).max()))
        out[f"{ls}, {kw}"] = worst
    return out


def main():
    rng = np.random.default_rng(0)
    print(json.dumps({"torch": torch.__version__, "hvp": check_hvp(rng),
                      "reference_lbfgs_vs_torch_max_difference": check_lbfgs(rng)}, indent=1))


if __name__ == "__main__":
    main()
