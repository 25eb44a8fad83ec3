"""An independent float64 NumPy reference for fastmlp's math.

Written from the textbook definitions and the algorithm boxes of the torch.optim
documentation (not from csrc/fastmlp/math.h): activations and their derivatives in terms of
the pre-activation z, losses as plain probability formulas (evaluated stably), backprop through
Dense layers, kernel regularization, one step of every optimizer, and the learning-rate
schedules documented in fastmlp.schedules.

A network is described by `spec`: a list of (units, activation_name, param, l1, l2) tuples,
one per Dense layer, and `weights`: [W1 (in, out), b1 (out,), W2, b2, ...].
"""
from __future__ import annotations

import math

import numpy as np

# ------------------------------------------------------------------ activations


def act_forward(name, param, z):
    if name == "linear":
        return z.copy()
    if name == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1/(1+e^-z), no overflow
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, z, param * z)
    if name == "elu":
        return np.where(z > 0, z, param * np.expm1(np.minimum(z, 0.0)))
    if name == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    raise KeyError(name)


def act_derivative(name, param, z):
    """Element-wise f'(z) (softmax is handled separately by its Jacobian)."""
    if name == "linear":
        return np.ones_like(z)
    if name == "sigmoid":
        s = act_forward("sigmoid", 0, z)
        return s * (1 - s)
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    if name == "relu":
        return (z > 0).astype(float)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, param)
    if name == "elu":
        return np.where(z > 0, 1.0, param * np.exp(np.minimum(z, 0.0)))
    raise KeyError(name)


def chain_activation(name, param, z, dL_da):
    """dL/dz from dL/da through a = f(z) (row-wise Jacobian for softmax)."""
    if name == "softmax":
        p = act_forward("softmax", 0, z)
        # J_ij = p_i (delta_ij - p_j)  =>  dL/dz_i = p_i (dL/da_i - sum_j dL/da_j p_j)
        return p * (dL_da - (dL_da * p).sum(axis=1, keepdims=True))
    return dL_da * act_derivative(name, param, z)


# ----------------------------------------------------------------------- losses


def log_softmax(z):
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def loss_and_grad(loss, out_act, out_param, z, y):
    """Mean loss over the batch and dL/dz, starting from the output pre-activation z.

    Cross-entropies are computed from logits (softmax / sigmoid or from_logits linear output
    give the same formula). y: class ids (n,) for sparse CE and hinge, else (n, k)."""
    n, k = z.shape
    if loss == "sparse_categorical_crossentropy":
        c = np.asarray(y).reshape(-1).astype(int)
        logp = log_softmax(z)
        per = -logp[np.arange(n), c]
        onehot = np.eye(k)[c]
        return per.mean(), (np.exp(logp) - onehot) / n
    if loss == "categorical_crossentropy":
        logp = log_softmax(z)
        per = -(y * logp).sum(axis=1)
        grad = np.exp(logp) * y.sum(axis=1, keepdims=True) - y
        return per.mean(), grad / n
    if loss == "binary_crossentropy":
        # -(y log s + (1-y) log(1-s)) with log s = -softplus(-z), log(1-s) = -softplus(z)
        softplus = lambda t: np.logaddexp(0.0, t)  # noqa: E731
        per = (y * softplus(-z) + (1 - y) * softplus(z)).mean(axis=1)
        s = act_forward("sigmoid", 0, z)
        return per.mean(), (s - y) / (k * n)
    a = act_forward(out_act, out_param, z)
    if loss == "mse":
        per = ((a - y) ** 2).mean(axis=1)
        dL_da = 2 * (a - y) / k / n
    elif loss == "multiclass_hinge":
        c = np.asarray(y).reshape(-1).astype(int)
        margins = a - a[np.arange(n), c][:, None] + 1.0
        margins[np.arange(n), c] = 0.0
        active = (margins > 0).astype(float)
        per = (margins * active).sum(axis=1)
        dL_da = active.copy()
        dL_da[np.arange(n), c] = -active.sum(axis=1)
        dL_da /= n
    else:
        raise KeyError(loss)
    return per.mean(), chain_activation(out_act, out_param, z, dL_da)


# --------------------------------------------------------------------- network


def forward(spec, weights, x):
    """Returns (zs, activations) per layer; the last activation is the model output."""
    zs, acts, a = [], [], np.asarray(x, dtype=np.float64)
    for i, (units, act, param, _, _) in enumerate(spec):
        W, b = weights[2 * i], weights[2 * i + 1]
        z = a @ W + b
        a = act_forward(act, param, z)
        zs.append(z)
        acts.append(a)
    return zs, acts


def predict(spec, weights, x):
    return forward(spec, weights, x)[1][-1]


def penalty(spec, weights):
    total = 0.0
    for i, (_, _, _, l1, l2) in enumerate(spec):
        W = weights[2 * i]
        total += l2 * np.sum(W * W) + l1 * np.sum(np.abs(W))
    return total


def penalty_grad(spec, weights):
    out = []
    for i, (_, _, _, l1, l2) in enumerate(spec):
        W = weights[2 * i]
        out += [2 * l2 * W + l1 * np.sign(W), np.zeros_like(weights[2 * i + 1])]
    return out


def loss_value(spec, weights, x, y, loss):
    zs, _ = forward(spec, weights, x)
    units, act, param, _, _ = spec[-1]
    val, _ = loss_and_grad(loss, act, param, zs[-1], y)
    return val + penalty(spec, weights)


def gradients(spec, weights, x, y, loss):
    """(loss incl. penalty, [dW1, db1, ...]) of the batch-mean loss plus the penalty."""
    x = np.asarray(x, dtype=np.float64)
    zs, acts = forward(spec, weights, x)
    _, out_act, out_param, _, _ = spec[-1]
    val, dz = loss_and_grad(loss, out_act, out_param, zs[-1], y)
    grads = [None] * len(weights)
    for i in range(len(spec) - 1, -1, -1):
        a_in = x if i == 0 else acts[i - 1]
        grads[2 * i] = a_in.T @ dz
        grads[2 * i + 1] = dz.sum(axis=0)
        if i > 0:
            da = dz @ weights[2 * i].T
            _, act, param, _, _ = spec[i - 1]
            dz = chain_activation(act, param, zs[i - 1], da)
    pg = penalty_grad(spec, weights)
    return val + penalty(spec, weights), [g + p for g, p in zip(grads, pg)]


# ------------------------------------------------------------------- schedules


def schedule_lr(kind, lr, t, decay_steps=1.0, rate=1.0, min_lr=0.0, staircase=False, warmup_steps=0):
    """Learning rate of update t (0-based), from the formulas in fastmlp.schedules' docstring."""
    if kind == "constant":
        out = lr
    elif kind == "step":
        out = lr * rate ** math.floor(t / decay_steps)
    elif kind == "exponential":
        p = t / decay_steps
        out = lr * rate ** (math.floor(p) if staircase else p)
    elif kind == "inverse_time":
        out = lr / (1 + rate * t / decay_steps)
    elif kind == "cosine":
        frac = min(t, decay_steps) / decay_steps
        out = min_lr + (lr - min_lr) * (1 + math.cos(math.pi * frac)) / 2
    else:
        raise KeyError(kind)
    if t < warmup_steps:
        out *= (t + 1) / warmup_steps
    return out


# ------------------------------------------------------------------ optimizers


class Optimizer:
    """torch.optim's algorithms; `lr` is a number or a function t -> lr (t = 0-based step)."""

    def __init__(self, kind, lr, **hp):
        self.kind = kind
        self.lr_fn = lr if callable(lr) else (lambda t, v=lr: v)
        self.hp = hp
        self.t = 0  # steps taken
        self.state = None

    def _init_state(self, params):
        z = [np.zeros_like(p) for p in params]
        st = {}
        if self.kind == "sgd":
            st["buf"] = [None] * len(params)
        elif self.kind == "adagrad":
            st["sum"] = [np.full_like(p, self.hp.get("initial_accumulator_value", 0.0)) for p in params]
        elif self.kind == "rmsprop":
            st["sq"] = [a.copy() for a in z]
            st["gavg"] = [a.copy() for a in z]
            st["buf"] = [a.copy() for a in z]
        elif self.kind == "adadelta":
            st["sq"] = [a.copy() for a in z]
            st["u"] = [a.copy() for a in z]
        elif self.kind in ("adam", "adamw"):
            st["m"] = [a.copy() for a in z]
            st["v"] = [a.copy() for a in z]
            st["vmax"] = [a.copy() for a in z]
        self.state = st

    def step(self, params, grads):
        """Returns the updated parameters (new arrays)."""
        if self.state is None:
            self._init_state(params)
        lr = self.lr_fn(self.t)
        self.t += 1
        t = self.t  # torch counts from 1
        hp, st = self.hp, self.state
        wd = hp.get("weight_decay", 0.0)
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            p = p.copy()
            g = g.copy()
            if self.kind != "adamw" and wd != 0.0:
                g = g + wd * p
            if self.kind == "sgd":
                mu, tau, nest = hp.get("momentum", 0.0), hp.get("dampening", 0.0), hp.get("nesterov", False)
                if mu != 0.0:
                    if t > 1:
                        b = mu * st["buf"][i] + (1 - tau) * g
                    else:
                        b = g.copy()
                    st["buf"][i] = b
                    g = g + mu * b if nest else b
                p = p - lr * g
            elif self.kind == "adagrad":
                eta, eps = hp.get("lr_decay", 0.0), hp.get("eps", 1e-10)
                clr = lr / (1 + (t - 1) * eta)
                st["sum"][i] = st["sum"][i] + g * g
                p = p - clr * g / (np.sqrt(st["sum"][i]) + eps)
            elif self.kind == "rmsprop":
                alpha, eps = hp.get("alpha", 0.99), hp.get("eps", 1e-8)
                mu, centered = hp.get("momentum", 0.0), hp.get("centered", False)
                st["sq"][i] = alpha * st["sq"][i] + (1 - alpha) * g * g
                v = st["sq"][i]
                if centered:
                    st["gavg"][i] = alpha * st["gavg"][i] + (1 - alpha) * g
                    v = v - st["gavg"][i] ** 2
                denom = np.sqrt(v) + eps
                if mu > 0:
                    st["buf"][i] = mu * st["buf"][i] + g / denom
                    p = p - lr * st["buf"][i]
                else:
                    p = p - lr * g / denom
            elif self.kind == "adadelta":
                rho, eps = hp.get("rho", 0.9), hp.get("eps", 1e-6)
                st["sq"][i] = rho * st["sq"][i] + (1 - rho) * g * g
                dx = np.sqrt(st["u"][i] + eps) / np.sqrt(st["sq"][i] + eps) * g
                st["u"][i] = rho * st["u"][i] + (1 - rho) * dx * dx
                p = p - lr * dx
            elif self.kind in ("adam", "adamw"):
                b1, b2 = hp.get("betas", (0.9, 0.999))
                eps, ams = hp.get("eps", 1e-8), hp.get("amsgrad", False)
                if self.kind == "adamw":
                    p = p * (1 - lr * wd)
                st["m"][i] = b1 * st["m"][i] + (1 - b1) * g
                st["v"][i] = b2 * st["v"][i] + (1 - b2) * g * g
                m_hat = st["m"][i] / (1 - b1 ** t)
                if ams:
                    st["vmax"][i] = np.maximum(st["vmax"][i], st["v"][i])
                    v_hat = st["vmax"][i] / (1 - b2 ** t)
                else:
                    v_hat = st["v"][i] / (1 - b2 ** t)
                p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
            else:
                raise KeyError(self.kind)
            out.append(p)
        return out


def train_steps(spec, weights, batches, loss, opt):
    """Runs opt over [(x, y), ...]; returns (weights, [loss of each batch before its step])."""
    losses = []
    w = [np.asarray(a, dtype=np.float64).copy() for a in weights]
    for x, y in batches:
        val, g = gradients(spec, w, x, y, loss)
        losses.append(val)
        w = opt.step(w, g)
    return w, losses


# Loss and output-layer combinations the tests cover: (loss, output activation, from_logits).
LOSS_OUTPUTS = [
    ("sparse_categorical_crossentropy", "softmax", False),
    ("sparse_categorical_crossentropy", "linear", True),
    ("categorical_crossentropy", "softmax", False),
    ("categorical_crossentropy", "linear", True),
    ("binary_crossentropy", "sigmoid", False),
    ("binary_crossentropy", "linear", True),
    ("mse", "linear", False),
    ("mse", "sigmoid", False),
    ("mse", "tanh", False),
    ("mse", "softmax", False),
    ("mse", "elu", False),
    ("multiclass_hinge", "linear", False),
    ("multiclass_hinge", "softmax", False),
    ("multiclass_hinge", "tanh", False),
]
