"""An independent float64 NumPy reference of the network, losses, regularizers and every
optimizer (formulas from torch.optim's documentation and the Keras loss definitions), used to
check the native engine. Written from the textbook formulas, not from csrc/fastmlp/math.h."""
import numpy as np


def act(name, z, p=0.0):
    if name == "linear":
        return z
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, z, p * z)
    if name == "elu":
        return np.where(z > 0, z, p * (np.exp(z) - 1.0))
    if name == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    raise ValueError(name)


def act_grad(name, z, p=0.0):
    """Elementwise f'(z) (not for softmax)."""
    if name == "linear":
        return np.ones_like(z)
    if name == "sigmoid":
        s = act("sigmoid", z)
        return s * (1 - s)
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    if name == "relu":
        return (z > 0).astype(float)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, p)
    if name == "elu":
        return np.where(z > 0, 1.0, p * np.exp(z))
    raise ValueError(name)


def loss_and_grad(loss, out_act, z, y, out_param=0.0):
    """Mean loss over the batch and d(mean loss)/dz for the output pre-activation z."""
    n, k = z.shape
    if loss in ("sparse_categorical_crossentropy", "categorical_crossentropy"):
        t = np.eye(k)[y.astype(int).ravel()] if loss == "sparse_categorical_crossentropy" else y
        lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) + z.max(1, keepdims=True)
        per = (t * (lse - z)).sum(1)
        s = np.exp(z - lse)
        return per.mean(), (s * t.sum(1, keepdims=True) - t) / n
    if loss == "binary_crossentropy":
        per = (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).mean(1)
        return per.mean(), (act("sigmoid", z) - y) / k / n
    a = act(out_act, z, out_param)
    if loss == "mse":
        per = ((a - y) ** 2).mean(1)
        da = 2 * (a - y) / k / n
    elif loss == "multiclass_hinge":
        c = y.astype(int).ravel()
        margins = a - a[np.arange(n), c][:, None] + 1.0
        margins[np.arange(n), c] = 0.0
        on = (margins > 0).astype(float)
        per = (margins * on).sum(1)
        da = on.copy()
        da[np.arange(n), c] = -on.sum(1)
        da /= n
    else:
        raise ValueError(loss)
    if out_act == "softmax":
        dz = a * (da - (da * a).sum(1, keepdims=True))
    else:
        dz = da * act_grad(out_act, z, out_param)
    return per.mean(), dz


def forward_backward(weights, layers, x, y, loss, regs):
    """Loss (with penalty) and gradients [dW1, db1, ...]; layers = [(activation, param)]."""
    zs, acts = [], [x]
    for i, (name, p) in enumerate(layers):
        z = acts[-1] @ weights[2 * i] + weights[2 * i + 1]
        zs.append(z)
        acts.append(act(name, z, p) if i + 1 < len(layers) else z)
    out_name, out_p = layers[-1]
    value, dz = loss_and_grad(loss, out_name, zs[-1], y, out_p)
    grads = [None] * len(weights)
    for i in reversed(range(len(layers))):
        l1, l2 = regs[i]
        w = weights[2 * i]
        value += l2 * (w ** 2).sum() + l1 * np.abs(w).sum()
        grads[2 * i] = acts[i].T @ dz + 2 * l2 * w + l1 * np.sign(w)
        grads[2 * i + 1] = dz.sum(0)
        if i > 0:
            name, p = layers[i - 1]
            dz = (dz @ w.T) * act_grad(name, zs[i - 1], p)
    return value, grads


def predict(weights, layers, x):
    a = x
    for i, (name, p) in enumerate(layers):
        a = act(name, a @ weights[2 * i] + weights[2 * i + 1], p)
    return a


class Optimizer:
    """torch.optim update rules over a list of arrays; cfg is the fm optimizer's get_config()."""

    def __init__(self, cfg, shapes, lr_at=None):
        self.cfg, self.t = cfg, 0
        self.lr_at = lr_at or (lambda t: cfg["schedule"]["initial_lr"])
        z = [np.zeros(s) for s in shapes]
        self.s = {k: [a.copy() for a in z] for k in ("a", "b", "c")}
        if cfg["kind"] == "adagrad":
            self.s["a"] = [np.full(s, cfg["initial_accumulator_value"]) for s in shapes]

    def step(self, params, grads):
        c, lr = self.cfg, self.lr_at(self.t)
        self.t += 1
        t = self.t
        wd = c["weight_decay"]
        for i, (p, g) in enumerate(zip(params, grads)):
            a, b, cc = self.s["a"][i], self.s["b"][i], self.s["c"][i]
            if c["kind"] != "adamw" and wd:
                g = g + wd * p
            k = c["kind"]
            if k == "sgd":
                if c["momentum"]:
                    a[...] = g if t == 1 else c["momentum"] * a + (1 - c["dampening"]) * g
                    g = g + c["momentum"] * a if c["nesterov"] else a
                p -= lr * g
            elif k == "adagrad":
                clr = lr / (1 + (t - 1) * c["lr_decay"])
                a += g * g
                p -= clr * g / (np.sqrt(a) + c["eps"])
            elif k == "rmsprop":
                al = c["alpha"]
                a[...] = al * a + (1 - al) * g * g
                if c["centered"]:
                    b[...] = al * b + (1 - al) * g
                    avg = np.sqrt(a - b * b) + c["eps"]
                else:
                    avg = np.sqrt(a) + c["eps"]
                if c["momentum"] > 0:
                    cc[...] = c["momentum"] * cc + g / avg
                    p -= lr * cc
                else:
                    p -= lr * g / avg
            elif k == "adadelta":
                rho, eps = c["rho"], c["eps"]
                a[...] = rho * a + (1 - rho) * g * g
                delta = np.sqrt(b + eps) / np.sqrt(a + eps) * g
                b[...] = rho * b + (1 - rho) * delta * delta
                p -= lr * delta
            elif k in ("adam", "adamw"):
                b1, b2 = c["betas"]
                if k == "adamw":
                    p *= 1 - lr * wd
                a[...] = b1 * a + (1 - b1) * g
                b[...] = b2 * b + (1 - b2) * g * g
                vhat = b
                if c["amsgrad"]:
                    cc[...] = np.maximum(cc, b)
                    vhat = cc
                p -= lr / (1 - b1 ** t) * a / (np.sqrt(vhat) / np.sqrt(1 - b2 ** t) + c["eps"])
            else:
                raise ValueError(k)
