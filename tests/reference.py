"""An independent float64 NumPy reference for fastmlp's math.

Written from the textbook definitions and the algorithm boxes of the torch.optim
documentation (not from csrc/fastmlp/math.h): activations and their derivatives in terms of
the pre-activation z, losses as plain probability formulas (evaluated stably), backprop through
Dense layers, kernel regularization, one step of every optimizer, and the learning-rate
schedules documented in fastmlp.schedules.

A network is described by `spec`: a list of layers, and `weights`: the arrays of get_weights()
in its order. A Dense layer is a (units, activation_name, param, l1, l2) tuple (or `Dense(...)`,
the same tuple with names), with weights W (in, out), b (out,). The other layers are the
namedtuples `Dropout(rate, seed)`, `BatchNorm(momentum, epsilon, center, scale)` (weights
[gamma (if scale)], [beta (if center)], moving_mean, moving_variance), `LayerNorm(epsilon,
center, scale)` (weights [gamma], [beta]) and `Activation(name, param)` (no weights).

The layer formulas follow their papers and the Keras documentation, not fastmlp's code:
* Dropout (Srivastava et al. 2014, inverted): in training y = x * keep / (1 - rate); the identity
  otherwise. keep is drawn by Philox4x32-10 (Salmon et al. 2011) from (seed, step, element), the
  counter-based scheme fastmlp documents: element = row * cols + col, step = the optimizer step,
  each call's four words deciding four elements (dropout_keep).
* BatchNormalization (Ioffe & Szegedy 2015): in training xhat = (x - mu_B) / sqrt(var_B + eps) with
  the batch mean and biased variance, y = gamma * xhat + beta; after the step the moving statistics
  become momentum * moving + (1 - momentum) * batch statistic (Keras 3). Inference uses them.
  Its backward pass is written stage by stage through var_B and mu_B (the paper's chain rule).
* LayerNormalization (Ba et al. 2016): the same over each row's features, in training and inference.
* Activation: f(x) of a separate layer. The loss sees the model's last activation (that of the last
  layer if it is a Dense or an Activation, else linear) applied to its input, the logits.
"""
from __future__ import annotations

import math
from collections import namedtuple

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
    if name == "exponential":
        return np.exp(z)
    if name == "softplus":
        return np.logaddexp(0.0, z)
    if name == "selu":
        return SELU_SCALE * np.where(z > 0, z, SELU_ALPHA * np.expm1(np.minimum(z, 0.0)))
    if name == "gelu":
        return 0.5 * z * (1.0 + erf(z / np.sqrt(2.0)))
    if name == "silu":
        return z * act_forward("sigmoid", 0, z)
    raise KeyError(name)


HUBER_DELTA = 1.0  # fm.losses.Huber's default, what the loss name "huber" gives

# SELU's constants as Keras and PyTorch define them (Klambauer et al. 2017)
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


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
    if name == "exponential":
        return np.exp(z)
    if name == "softplus":
        return act_forward("sigmoid", 0, z)
    if name == "selu":
        return SELU_SCALE * np.where(z > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(z, 0.0)))
    if name == "gelu":  # Phi(z) + z phi(z)
        return 0.5 * (1.0 + erf(z / np.sqrt(2.0))) + z * np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)
    if name == "silu":
        s = act_forward("sigmoid", 0, z)
        return s * (1.0 + z * (1.0 - s))
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
    if loss == "poisson" and out_act == "exponential":
        # PyTorch's PoissonNLLLoss(log_input=True, full=False): exp(z) - y z, mean over outputs
        per = (np.exp(z) - y * z).mean(axis=1)
        return per.mean(), (np.exp(z) - y) / (k * n)
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
    elif loss == "huber":  # Keras / PyTorch, delta = 1
        d = a - y
        per = np.where(np.abs(d) <= HUBER_DELTA, 0.5 * d * d, HUBER_DELTA * (np.abs(d) - 0.5 * HUBER_DELTA)).mean(axis=1)
        dL_da = np.clip(d, -HUBER_DELTA, HUBER_DELTA) / k / n
    elif loss == "mae":
        per = np.abs(a - y).mean(axis=1)
        dL_da = np.sign(a - y) / k / n
    elif loss == "log_cosh":
        d = a - y
        per = np.log(np.cosh(d)).mean(axis=1)
        dL_da = np.tanh(d) / k / n
    elif loss == "poisson":  # Keras: y_pred - y_true * log(y_pred + epsilon), epsilon = 1e-7
        per = (a - y * np.log(a + 1e-7)).mean(axis=1)
        dL_da = (1.0 - y / (a + 1e-7)) / k / n
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


# ---------------------------------------------------------------------- layers

Dense = namedtuple("Dense", "units act param l1 l2", defaults=("linear", 0.0, 0.0, 0.0))
Dropout = namedtuple("Dropout", "rate seed", defaults=(None,))
BatchNorm = namedtuple("BatchNorm", "momentum epsilon center scale", defaults=(0.99, 1e-3, True, True))
LayerNorm = namedtuple("LayerNorm", "epsilon center scale", defaults=(1e-3, True, True))
Activation = namedtuple("Activation", "act param", defaults=(0.0,))
_KINDS = (Dense, Dropout, BatchNorm, LayerNorm, Activation)


def layer(entry):
    """The layer a spec entry describes (a plain (units, act, param, l1, l2) tuple is a Dense)."""
    return entry if isinstance(entry, _KINDS) else Dense(*entry)


def weight_names(entry):
    """Names of the layer's weights in get_weights() order (Keras's)."""
    lay = layer(entry)
    if isinstance(lay, Dense):
        return ["kernel", "bias"]
    if isinstance(lay, (BatchNorm, LayerNorm)):
        names = (["gamma"] if lay.scale else []) + (["beta"] if lay.center else [])
        return names + (["moving_mean", "moving_variance"] if isinstance(lay, BatchNorm) else [])
    return []


def weight_shapes(spec, input_dim):
    """Shapes of all weights in get_weights() order."""
    shapes, width = [], input_dim
    for entry in spec:
        lay = layer(entry)
        if isinstance(lay, Dense):
            shapes += [(width, lay.units), (lay.units,)]
            width = lay.units
        else:
            shapes += [(width,)] * len(weight_names(lay))
    return shapes


def trainable(spec):
    """One flag per weight: False for BatchNormalization's moving statistics (averaged, not trained)."""
    return [not name.startswith("moving_") for entry in spec for name in weight_names(entry)]


def _by_layer(spec, weights):
    """Per layer: (index of its first weight, {name: array})."""
    out, k = [], 0
    for entry in spec:
        names = weight_names(entry)
        out.append((k, dict(zip(names, weights[k:k + len(names)]))))
        k += len(names)
    if k != len(weights):
        raise ValueError(f"the spec has {k} weights, got {len(weights)}")
    return out


def output_activation(spec):
    """(name, param) of the activation the loss applies to the logits."""
    last = layer(spec[-1])
    return (last.act, last.param) if isinstance(last, (Dense, Activation)) else ("linear", 0.0)


# ------------------------------------------------------------- dropout masks

_M64 = (1 << 64) - 1


def derive_seed(seed, stream):
    """fastmlp's seed derivation: SplitMix64 (Steele, Lea & Flood 2014) of seed ^ (stream * 0xd1b5...)."""
    z = ((seed ^ (stream * 0xD1B54A32D192ED03)) + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def resolve_seeds(spec, model_seed):
    """The spec with each Dropout(rate, None) given the seed fastmlp derives for it:
    derive_seed(model_seed, 1_000_000 + layer index)."""
    out = []
    for i, entry in enumerate(spec):
        lay = layer(entry)
        if isinstance(lay, Dropout) and lay.seed is None:
            lay = Dropout(lay.rate, derive_seed(model_seed, 1_000_000 + i))
        out.append(lay if isinstance(entry, _KINDS) else entry)
    return out


def philox4x32_10(counter, key):
    """Philox4x32-10 (Salmon et al., SC 2011) of 4 counter words (arrays of uint32 values, any
    shape) and 2 key words: the 4 output words, as uint64 arrays holding 32-bit values."""
    m32 = np.uint64(0xFFFFFFFF)
    c = [np.asarray(w, dtype=np.uint64) & m32 for w in counter]
    c = np.broadcast_arrays(*c)
    c = [a.copy() for a in c]
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]  # 32 x 32 bits: exact in uint64
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0), p1 & m32,
             (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1), p0 & m32]
        k0 = (k0 + 0x9E3779B9) & 0xFFFFFFFF  # the Weyl key schedule
        k1 = (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c


def dropout_keep(seed, step, rows, cols, rate, first=0):
    """Boolean (rows, cols) mask. Element e = first + row * cols + col (first: the global batch's
    elements before this one) lies in block e // 64 at j = e % 64; it is kept iff word j // 16 of
    Philox4x32-10 with counter (c lo, c hi, step lo, step hi), c = 16 * (e // 64) + j % 16, and key
    (seed lo, seed hi) is >= floor(rate * 2^32). (Four words per counter, all used.)"""
    e = np.arange(rows * cols, dtype=np.uint64) + np.uint64(first)
    step, seed = int(step) & _M64, int(seed) & _M64
    c = (e // np.uint64(64)) * np.uint64(16) + e % np.uint64(16)
    words = philox4x32_10([c & np.uint64(0xFFFFFFFF), c >> np.uint64(32), step & 0xFFFFFFFF, step >> 32],
                          (seed & 0xFFFFFFFF, seed >> 32))
    k = (e // np.uint64(16)) % np.uint64(4)
    word = np.choose(k.astype(np.intp), words)
    threshold = int(math.floor(rate * 2.0 ** 32))
    return (word >= np.uint64(threshold)).reshape(rows, cols)


# ---------------------------------------------------------------------- network


def forward_layers(spec, weights, x, training=False, step=0, masks=None):
    """Runs the network layer by layer. training: Dropout applies its mask (masks[i] when given,
    else the Philox mask of the layer's seed at `step`; seeds must be resolved, see resolve_seeds)
    and BatchNormalization the batch statistics; else the moving ones and no dropout.
    Returns one record per layer: {"x": input, "out": output} plus "z" (Dense pre-activation),
    "mask" (Dropout in training), "mean", "var", "xhat" (normalizations)."""
    a = np.asarray(x, dtype=np.float64)
    trace = []
    for i, (entry, (_, w)) in enumerate(zip(spec, _by_layer(spec, weights))):
        lay = layer(entry)
        rec = {"x": a}
        if isinstance(lay, Dense):
            rec["z"] = a @ w["kernel"] + w["bias"]
            out = act_forward(lay.act, lay.param, rec["z"])
        elif isinstance(lay, Activation):
            out = act_forward(lay.act, lay.param, a)
        elif isinstance(lay, Dropout):
            out = a
            if training:
                keep = masks[i] if masks is not None and i in masks else \
                    dropout_keep(lay.seed, step, a.shape[0], a.shape[1], lay.rate)
                rec["mask"] = np.asarray(keep, dtype=bool)
                out = np.where(rec["mask"], a / (1.0 - lay.rate), 0.0)
        else:  # BatchNorm (over the batch, axis 0) or LayerNorm (over a row's features, axis 1)
            axis = 0 if isinstance(lay, BatchNorm) else 1
            if isinstance(lay, BatchNorm) and not training:
                mean, var = w["moving_mean"], w["moving_variance"]
            else:
                mean = a.mean(axis=axis, keepdims=True)
                var = ((a - mean) ** 2).mean(axis=axis, keepdims=True)  # biased
            xhat = (a - mean) / np.sqrt(var + lay.epsilon)
            out = w.get("gamma", 1.0) * xhat + w.get("beta", 0.0)
            rec.update(mean=mean, var=var, xhat=xhat)
        rec["out"] = out
        trace.append(rec)
        a = out
    return trace


def logits(spec, trace):
    """What the loss's output activation is applied to: the last Dense's pre-activation, the last
    Activation's input, or the last layer's output."""
    last = layer(spec[-1])
    if isinstance(last, Dense):
        return trace[-1]["z"]
    return trace[-1]["x"] if isinstance(last, Activation) else trace[-1]["out"]


def normalization_input_grad(dxhat, x, mean, var, eps, axis):
    """dL/dx of xhat = (x - mean) / sqrt(var + eps) with the group's own mean and biased variance,
    by the chain rule through var and mean (Ioffe & Szegedy 2015, Algorithm 1's backward)."""
    n = x.shape[axis]
    xc = x - mean
    dvar = (dxhat * xc).sum(axis=axis, keepdims=True) * -0.5 * (var + eps) ** -1.5
    dmean = -dxhat.sum(axis=axis, keepdims=True) / np.sqrt(var + eps) + dvar * (-2.0 * xc).mean(axis=axis,
                                                                                               keepdims=True)
    return dxhat / np.sqrt(var + eps) + dvar * 2.0 * xc / n + dmean / n


def backward_layers(spec, weights, trace, d_logits):
    """Gradients of the loss w.r.t. every weight, given dL/dlogits and a training-mode trace
    (moving statistics get 0)."""
    grads = [np.zeros_like(np.asarray(w, dtype=np.float64)) for w in weights]
    d = d_logits
    per_layer = _by_layer(spec, weights)
    for i in range(len(spec) - 1, -1, -1):
        lay, rec, (k, w) = layer(spec[i]), trace[i], per_layer[i]
        last = i == len(spec) - 1  # d is w.r.t. the logits: the output activation is in it
        if isinstance(lay, Dense):
            dz = d if last else chain_activation(lay.act, lay.param, rec["z"], d)
            grads[k] = rec["x"].T @ dz
            grads[k + 1] = dz.sum(axis=0)
            d = dz @ w["kernel"].T
        elif isinstance(lay, Activation):
            d = d if last else chain_activation(lay.act, lay.param, rec["x"], d)
        elif isinstance(lay, Dropout):
            d = np.where(rec["mask"], d / (1.0 - lay.rate), 0.0)
        else:
            names = weight_names(lay)
            if lay.scale:
                grads[k + names.index("gamma")] = (d * rec["xhat"]).sum(axis=0)
            if lay.center:
                grads[k + names.index("beta")] = d.sum(axis=0)
            axis = 0 if isinstance(lay, BatchNorm) else 1
            d = normalization_input_grad(d * w.get("gamma", 1.0), rec["x"], rec["mean"], rec["var"], lay.epsilon,
                                         axis)
    return grads


def forward(spec, weights, x, training=False, step=0, masks=None):
    """Returns (zs, activations) per layer; the last activation is the model output. zs: a Dense's
    pre-activation, an Activation's input, any other layer's output."""
    trace = forward_layers(spec, weights, x, training, step, masks)
    zs = [r["z"] if "z" in r else (r["x"] if isinstance(layer(e), Activation) else r["out"])
          for e, r in zip(spec, trace)]
    return zs, [r["out"] for r in trace]


def predict(spec, weights, x):
    """Inference output (what model.predict returns)."""
    return forward_layers(spec, weights, x)[-1]["out"]


def penalty(spec, weights):
    total = 0.0
    for entry, (k, _) in zip(spec, _by_layer(spec, weights)):
        lay = layer(entry)
        if isinstance(lay, Dense):
            W = weights[k]
            total += lay.l2 * np.sum(W * W) + lay.l1 * np.sum(np.abs(W))
    return total


def penalty_grad(spec, weights):
    out = [np.zeros_like(np.asarray(w, dtype=np.float64)) for w in weights]
    for entry, (k, _) in zip(spec, _by_layer(spec, weights)):
        lay = layer(entry)
        if isinstance(lay, Dense):
            out[k] = 2 * lay.l2 * weights[k] + lay.l1 * np.sign(weights[k])
    return out


def loss_value(spec, weights, x, y, loss, training=False, step=0, masks=None):
    """Mean loss plus penalty; training=False is evaluate's, True the one gradients differentiate."""
    trace = forward_layers(spec, weights, x, training, step, masks)
    val, _ = loss_and_grad(loss, *output_activation(spec), logits(spec, trace), y)
    return val + penalty(spec, weights)


def gradients(spec, weights, x, y, loss, step=0, masks=None, return_trace=False):
    """(loss incl. penalty, [dW1, db1, ...]) of the training-mode batch-mean loss plus the penalty,
    in get_weights() order (0 for moving statistics). Dropout masks are those of `step`.
    return_trace=True adds the forward trace (its batch statistics update the moving ones)."""
    weights = [np.asarray(w, dtype=np.float64) for w in weights]
    trace = forward_layers(spec, weights, x, True, step, masks)
    val, d_logits = loss_and_grad(loss, *output_activation(spec), logits(spec, trace), y)
    grads = backward_layers(spec, weights, trace, d_logits)
    out = (val + penalty(spec, weights), [g + p for g, p in zip(grads, penalty_grad(spec, weights))])
    return out + (trace,) if return_trace else out


def update_moving(spec, weights, trace):
    """BatchNormalization's moving statistics after a training step (Keras 3):
    moving = momentum * moving + (1 - momentum) * batch statistic (mean, biased variance)."""
    out = [np.asarray(w, dtype=np.float64).copy() for w in weights]
    for entry, rec, (k, _) in zip(spec, trace, _by_layer(spec, weights)):
        lay = layer(entry)
        if isinstance(lay, BatchNorm):
            j = k + weight_names(lay).index("moving_mean")
            out[j] = lay.momentum * out[j] + (1 - lay.momentum) * rec["mean"].ravel()
            out[j + 1] = lay.momentum * out[j + 1] + (1 - lay.momentum) * rec["var"].ravel()
    return out


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
        elif self.kind in ("adam", "adamw", "nadam", "radam", "lamb"):
            st["m"] = [a.copy() for a in z]
            st["v"] = [a.copy() for a in z]
            st["vmax"] = [a.copy() for a in z]
        st["mu_product"] = 1.0  # NAdam
        self.state = st

    def clip(self, grads):
        """Keras's clipping of the whole gradient list (at most one of the three is set):
        clipvalue per element, clipnorm per tensor (clip_by_norm: g * c / max(||g||, c)),
        global_clipnorm over all tensors (torch.nn.utils.clip_grad_norm_: g * min(1, c / (||g|| + 1e-6)))."""
        hp = self.hp
        if hp.get("clipvalue"):
            c = hp["clipvalue"]
            return [np.clip(g, -c, c) for g in grads]
        if hp.get("clipnorm"):
            c = hp["clipnorm"]
            return [g * (c / max(np.sqrt(np.sum(g * g)), c)) for g in grads]
        if hp.get("global_clipnorm"):
            c = hp["global_clipnorm"]
            total = np.sqrt(sum(np.sum(g * g) for g in grads))
            return [g * min(1.0, c / (total + 1e-6)) for g in grads]
        return [g.copy() for g in grads]

    def step(self, params, grads):
        """Returns the updated parameters (new arrays)."""
        if self.state is None:
            self._init_state(params)
        lr = self.lr_fn(self.t)
        self.t += 1
        t = self.t  # torch counts from 1
        hp, st = self.hp, self.state
        wd = hp.get("weight_decay", 0.0)
        decoupled = self.kind == "adamw" or (self.kind in ("nadam", "radam") and hp.get("decoupled_weight_decay"))
        grads = self.clip(grads)
        if self.kind == "nadam":  # torch.optim.NAdam keeps one running product per step
            psi = hp.get("momentum_decay", 4e-3)
            b1 = hp.get("betas", (0.9, 0.999))[0]
            mu = b1 * (1.0 - 0.5 * 0.96 ** (t * psi))
            mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * psi))
            st["mu_product"] *= mu
            mu_product_next = st["mu_product"] * mu_next
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            p = p.copy()
            g = g.copy()
            if wd != 0.0 and decoupled:
                p = p * (1 - lr * wd)
            elif wd != 0.0 and self.kind != "lamb":
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
                st["m"][i] = b1 * st["m"][i] + (1 - b1) * g
                st["v"][i] = b2 * st["v"][i] + (1 - b2) * g * g
                m_hat = st["m"][i] / (1 - b1 ** t)
                if ams:
                    st["vmax"][i] = np.maximum(st["vmax"][i], st["v"][i])
                    v_hat = st["vmax"][i] / (1 - b2 ** t)
                else:
                    v_hat = st["v"][i] / (1 - b2 ** t)
                p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
            elif self.kind == "nadam":  # torch.optim.NAdam (Dozat 2016)
                b1, b2 = hp.get("betas", (0.9, 0.999))
                eps = hp.get("eps", 1e-8)
                st["m"][i] = b1 * st["m"][i] + (1 - b1) * g
                st["v"][i] = b2 * st["v"][i] + (1 - b2) * g * g
                denom = np.sqrt(st["v"][i] / (1 - b2 ** t)) + eps
                p = p - lr * (1 - mu) / (1 - st["mu_product"]) * g / denom
                p = p - lr * mu_next / (1 - mu_product_next) * st["m"][i] / denom
            elif self.kind == "radam":  # torch.optim.RAdam (Liu et al. 2020)
                b1, b2 = hp.get("betas", (0.9, 0.999))
                eps = hp.get("eps", 1e-8)
                st["m"][i] = b1 * st["m"][i] + (1 - b1) * g
                st["v"][i] = b2 * st["v"][i] + (1 - b2) * g * g
                m_hat = st["m"][i] / (1 - b1 ** t)
                rho_inf = 2 / (1 - b2) - 1
                rho_t = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
                if rho_t > 5:
                    rect = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
                    adaptive = np.sqrt(1 - b2 ** t) / (np.sqrt(st["v"][i]) + eps)
                    p = p - m_hat * lr * adaptive * rect
                else:
                    p = p - m_hat * lr
            elif self.kind == "lamb":  # You et al. 2019, Algorithm 2; trust ratio per tensor
                b1, b2 = hp.get("betas", (0.9, 0.999))
                eps = hp.get("eps", 1e-6)
                st["m"][i] = b1 * st["m"][i] + (1 - b1) * g
                st["v"][i] = b2 * st["v"][i] + (1 - b2) * g * g
                r = (st["m"][i] / (1 - b1 ** t)) / (np.sqrt(st["v"][i] / (1 - b2 ** t)) + eps) + wd * p
                w_norm, r_norm = np.sqrt(np.sum(p * p)), np.sqrt(np.sum(r * r))
                trust = w_norm / r_norm if w_norm > 0 and r_norm > 0 else 1.0
                p = p - lr * trust * r
            else:
                raise KeyError(self.kind)
            out.append(p)
        return out


def train_step(spec, weights, x, y, loss, opt, step=0):
    """One optimizer step on batch (x, y), as train_on_batch does: the training-mode gradients
    (Dropout masks of `step`), opt over the trained weights, then the moving statistics averaged
    with the batch's. Returns (new weights, the batch's loss before the step)."""
    w = [np.asarray(a, dtype=np.float64).copy() for a in weights]
    val, g, trace = gradients(spec, w, x, y, loss, step=step, return_trace=True)
    flags = trainable(spec)
    stepped = iter(opt.step([p for p, f in zip(w, flags) if f], [d for d, f in zip(g, flags) if f]))
    moved = update_moving(spec, w, trace)
    return [next(stepped) if f else m for f, m in zip(flags, moved)], val


def train_steps(spec, weights, batches, loss, opt, step=0, on_step=None):
    """Runs opt over [(x, y), ...], the first at optimizer step `step` (it keys the Dropout
    masks); on_step(weights) after each step. Returns (weights, [loss of each batch before its
    step])."""
    losses = []
    w = [np.asarray(a, dtype=np.float64).copy() for a in weights]
    for i, (x, y) in enumerate(batches):
        w, val = train_step(spec, w, x, y, loss, opt, step + i)
        losses.append(val)
        if on_step is not None:
            on_step(w)
    return w, losses


def epoch_batches(x, y, batch_size, order=None):
    """fit's batches of one epoch: rows in `order` (None: as given), batch_size at a time, the last
    batch what is left."""
    order = np.arange(len(x)) if order is None else np.asarray(order)
    return [(x[order[s:s + batch_size]], np.asarray(y)[order[s:s + batch_size]])
            for s in range(0, len(x), batch_size)]


def fit(spec, weights, x, y, loss, opt, batch_size, orders, step=0, on_step=None):
    """fit over len(orders) epochs, epoch e taking the rows in orders[e] (None: unshuffled).
    Returns (weights, [epoch loss]): the epoch loss is the row-weighted mean of its batch losses."""
    w, epoch_losses = weights, []
    for order in orders:
        batches = epoch_batches(x, y, batch_size, order)
        w, losses = train_steps(spec, w, batches, loss, opt, step, on_step)
        step += len(batches)
        epoch_losses.append(sum(v * len(b[0]) for v, b in zip(losses, batches)) / len(x))
    return w, epoch_losses


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
    ("poisson", "exponential", False),
    ("poisson", "sigmoid", False),
    ("huber", "linear", False),
    ("huber", "tanh", False),
    ("mae", "linear", False),
    ("mae", "softplus", False),
    ("log_cosh", "linear", False),
    ("log_cosh", "sigmoid", False),
]


# ----------------------------------------------------------------------------- L-BFGS


def flat(weights):
    """get_weights() arrays as one flat vector (the engine's parameter order)."""
    return np.concatenate([np.ravel(w) for w in weights])


def unflat(v, like):
    """A flat vector back into arrays shaped like `like`."""
    out, i = [], 0
    for w in like:
        out.append(np.asarray(v[i:i + np.size(w)]).reshape(np.shape(w)))
        i += np.size(w)
    return out


def _cubic_min(x1, f1, g1, x2, f2, g2, bounds=None):
    """Minimizer of the cubic through two points with slopes, clamped to bounds (torch's
    _cubic_interpolate, after minFunc)."""
    lo, hi = bounds if bounds is not None else (min(x1, x2), max(x1, x2))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 * d1 - g1 * g2
    if d2_square < 0:
        return (lo + hi) / 2.0
    d2 = np.sqrt(d2_square)
    if x1 <= x2:
        pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(pos, lo), hi)


def _strong_wolfe(fun, x, t, d, f, g, gtd, tolerance_change, max_ls, c1=1e-4, c2=0.9):
    """Nocedal & Wright's line search with zoom, as torch.optim.LBFGS runs it. fun(w) -> (f, g)."""
    d_norm = np.abs(d).max()
    f_new, g_new = fun(x + t * d)
    evals, gtd_new = 1, g_new @ d
    t_prev, f_prev, g_prev, gtd_prev = 0.0, f, g, gtd
    done, ls_iter = False, 0
    while ls_iter < max_ls:
        if f_new > f + c1 * t * gtd or (ls_iter > 1 and f_new >= f_prev):
            br, br_f, br_g, br_gtd = [t_prev, t], [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            br, br_f, br_g, done = [t], [f_new], [g_new], True
            break
        if gtd_new >= 0:
            br, br_f, br_g, br_gtd = [t_prev, t], [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new]
            break
        nxt = _cubic_min(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(t + 0.01 * (t - t_prev), t * 10))
        t_prev, f_prev, g_prev, gtd_prev = t, f_new, g_new, gtd_new
        t = nxt
        f_new, g_new = fun(x + t * d)
        evals, gtd_new, ls_iter = evals + 1, g_new @ d, ls_iter + 1
    if ls_iter == max_ls:
        br, br_f, br_g = [0.0, t], [f, f_new], [g, g_new]
    insufficient = False
    low, high = (0, 1) if br_f[0] <= br_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(br[1] - br[0]) * d_norm < tolerance_change:
            break
        t = _cubic_min(br[0], br_f[0], br_gtd[0], br[1], br_f[1], br_gtd[1])
        eps = 0.1 * (max(br) - min(br))
        if min(max(br) - t, t - min(br)) < eps:
            if insufficient or t >= max(br) or t <= min(br):
                t = max(br) - eps if abs(t - max(br)) < abs(t - min(br)) else min(br) + eps
                insufficient = False
            else:
                insufficient = True
        else:
            insufficient = False
        f_new, g_new = fun(x + t * d)
        evals, gtd_new, ls_iter = evals + 1, g_new @ d, ls_iter + 1
        if f_new > f + c1 * t * gtd or f_new >= br_f[low]:
            br[high], br_f[high], br_g[high], br_gtd[high] = t, f_new, g_new, gtd_new
            low, high = (0, 1) if br_f[0] <= br_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (br[high] - br[low]) >= 0:
                br[high], br_f[high], br_g[high], br_gtd[high] = br[low], br_f[low], br_g[low], br_gtd[low]
            br[low], br_f[low], br_g[low], br_gtd[low] = t, f_new, g_new, gtd_new
    return br_f[low], br_g[low], br[low], evals


class LBFGS:
    """torch.optim.LBFGS on a flat float64 vector: step(w, fun) with fun(w) -> (loss, grad) returns
    (new w, loss at w). The history persists between steps, as torch's optimizer state."""

    def __init__(self, lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9,
                 history_size=100, line_search_fn=None):
        self.lr, self.max_iter = lr, max_iter
        self.max_eval = max_iter * 5 // 4 if max_eval is None else max_eval
        self.tol_grad, self.tol_change, self.history_size = tolerance_grad, tolerance_change, history_size
        self.line_search = line_search_fn
        self.n_iter, self.d, self.t, self.prev_g, self.prev_loss = 0, None, None, None, None
        self.dirs, self.stps, self.ro, self.h_diag = [], [], [], 1.0

    def step(self, w, fun):
        w = np.array(w, dtype=np.float64)
        loss, g = fun(w)
        orig_loss, evals = loss, 1
        if np.abs(g).max() <= self.tol_grad:
            return w, orig_loss
        n_iter, opt_cond = 0, False
        while n_iter < self.max_iter:
            n_iter += 1
            self.n_iter += 1
            if self.n_iter == 1:
                self.d, self.dirs, self.stps, self.ro, self.h_diag = -g, [], [], [], 1.0
            else:
                y, s = g - self.prev_g, self.d * self.t
                ys = y @ s
                if ys > 1e-10:
                    if len(self.dirs) == self.history_size:
                        self.dirs.pop(0), self.stps.pop(0), self.ro.pop(0)
                    self.dirs.append(y), self.stps.append(s), self.ro.append(1.0 / ys)
                    self.h_diag = ys / (y @ y)
                q = -g
                al = [0.0] * len(self.dirs)
                for i in range(len(self.dirs) - 1, -1, -1):
                    al[i] = (self.stps[i] @ q) * self.ro[i]
                    q = q - al[i] * self.dirs[i]
                r = q * self.h_diag
                for i in range(len(self.dirs)):
                    be = (self.dirs[i] @ r) * self.ro[i]
                    r = r + (al[i] - be) * self.stps[i]
                self.d = r
            self.prev_g, self.prev_loss = g.copy(), loss
            self.t = min(1.0, 1.0 / np.abs(g).sum()) * self.lr if self.n_iter == 1 else self.lr
            gtd = g @ self.d
            if gtd > -self.tol_change:
                break
            ls_evals = 0
            if self.line_search == "strong_wolfe":
                # torch passes no tolerance_change to _strong_wolfe: its zoom uses the default 1e-9
                loss, g, self.t, ls_evals = _strong_wolfe(fun, w, self.t, self.d, loss, g, gtd, 1e-9,
                                                          self.max_eval - evals)
                w = w + self.t * self.d
                opt_cond = np.abs(g).max() <= self.tol_grad
            else:
                w = w + self.t * self.d
                if n_iter != self.max_iter:
                    loss, g = fun(w)
                    opt_cond = np.abs(g).max() <= self.tol_grad
                    ls_evals = 1
            evals += ls_evals
            if n_iter == self.max_iter or evals >= self.max_eval or opt_cond:
                break
            if np.abs(self.d * self.t).max() <= self.tol_change:
                break
            if abs(loss - self.prev_loss) < self.tol_change:
                break
        return w, orig_loss
