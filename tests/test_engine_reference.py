"""The native engine against the float64 NumPy reference in numpy_reference.py: forward pass,
every loss's gradient through every activation, regularization, and several steps of every
optimizer with its options. Float64 engines must agree to ~1e-10; float32 ones to ~1e-5."""
import math

import numpy as np
import pytest

import fastmlp as fm
import numpy_reference as ref

ACTS = [("linear", 0.0), ("sigmoid", 0.0), ("tanh", 0.0), ("relu", 0.0), ("leaky_relu", 0.1), ("elu", 0.7)]
OUTPUT = {"sparse_categorical_crossentropy": ("softmax", 0.0), "categorical_crossentropy": ("softmax", 0.0),
          "binary_crossentropy": ("sigmoid", 0.0), "mse": ("linear", 0.0), "multiclass_hinge": ("linear", 0.0)}


def activation(name, p):
    if name == "leaky_relu":
        return fm.activations.LeakyReLU(p)
    if name == "elu":
        return fm.activations.ELU(p)
    return name


def targets(loss, n, k, rng):
    if loss in ("sparse_categorical_crossentropy", "multiclass_hinge"):
        return rng.integers(0, k, n)
    if loss == "categorical_crossentropy":
        return np.eye(k)[rng.integers(0, k, n)]
    if loss == "binary_crossentropy":
        return rng.integers(0, 2, (n, k)).astype(float)
    return rng.normal(size=(n, k))


def build(layers, loss, optimizer="sgd", regs=None, dtype="float64", d=5, seed=0):
    regs = regs or [(0.0, 0.0)] * len(layers)
    dense = []
    for i, ((units, name, p), (l1, l2)) in enumerate(zip(layers, regs)):
        kw = {"input_dim": d} if i == 0 else {}
        dense.append(fm.Dense(units, activation=activation(name, p), kernel_regularizer=fm.regularizers.L1L2(l1, l2),
                              **kw))
    m = fm.Sequential(dense, seed=seed)
    m.compile(optimizer=optimizer, loss=loss, device="cpu", dtype=dtype)
    return m


def ref_targets(loss, y, k):
    return y.reshape(-1, 1) if loss in ("sparse_categorical_crossentropy", "multiclass_hinge") else y


@pytest.mark.parametrize("hidden", ACTS, ids=lambda a: a[0])
@pytest.mark.parametrize("loss", sorted(OUTPUT))
def test_forward_and_gradients_match_reference(hidden, loss):
    rng = np.random.default_rng(0)
    n, d, k = 9, 5, 4
    out = OUTPUT[loss]
    layers = [(7, *hidden), (6, *hidden), (k, *out)]
    regs = [(1e-3, 2e-3), (0.0, 1e-2), (5e-3, 0.0)]
    m = build(layers, loss, regs=regs)
    x = rng.normal(size=(n, d))
    y = targets(loss, n, k, rng)
    w = [a.astype(np.float64) for a in m.get_weights()]
    spec = [(name, p) for _, name, p in layers]
    np.testing.assert_allclose(m.predict(x), ref.predict(w, spec, x), rtol=1e-12, atol=1e-13)
    value, grads = ref.forward_backward(w, spec, x, ref_targets(loss, y, k), loss, regs)
    for got, want in zip(m.compute_gradients(x, y), grads):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert m.evaluate(x, y)["loss"] == pytest.approx(value, rel=1e-12)


OPTIMIZERS = {
    "sgd": lambda: fm.optimizers.SGD(lr=0.1),
    "sgd_momentum": lambda: fm.optimizers.SGD(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=1e-2),
    "sgd_nesterov": lambda: fm.optimizers.SGD(lr=0.1, momentum=0.8, nesterov=True),
    "adagrad": lambda: fm.optimizers.Adagrad(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.2, weight_decay=1e-3),
    "rmsprop": lambda: fm.optimizers.RMSprop(lr=0.01),
    "rmsprop_centered_momentum": lambda: fm.optimizers.RMSprop(lr=0.01, centered=True, momentum=0.9,
                                                               weight_decay=1e-3),
    "rmsprop_momentum": lambda: fm.optimizers.RMSprop(lr=0.01, momentum=0.5),
    "adadelta": lambda: fm.optimizers.Adadelta(lr=1.0, rho=0.8, weight_decay=1e-3),
    "adam": lambda: fm.optimizers.Adam(lr=0.01),
    "adam_amsgrad_decay": lambda: fm.optimizers.Adam(lr=0.01, betas=(0.8, 0.9), amsgrad=True, weight_decay=1e-2),
    "adamw": lambda: fm.optimizers.AdamW(lr=0.01, weight_decay=0.1),
    "adamw_amsgrad": lambda: fm.optimizers.AdamW(lr=0.01, amsgrad=True),
}


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 2e-5)])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_steps_match_reference(name, dtype, tol):
    rng = np.random.default_rng(1)
    n, d, k = 12, 5, 3
    layers = [(8, "tanh", 0.0), (k, "softmax", 0.0)]
    regs = [(1e-3, 1e-3), (0.0, 0.0)]
    opt = OPTIMIZERS[name]()
    m = build(layers, "sparse_categorical_crossentropy", optimizer=opt, regs=regs, dtype=dtype)
    x, y = rng.normal(size=(n, d)), rng.integers(0, k, n)
    w = [a.astype(np.float64) for a in m.get_weights()]
    reference = ref.Optimizer(opt.get_config(), [a.shape for a in w])
    spec = [(nm, p) for _, nm, p in layers]
    for _ in range(6):
        value, grads = ref.forward_backward(w, spec, x, y.reshape(-1, 1), "sparse_categorical_crossentropy", regs)
        loss = m.train_on_batch(x, y)
        assert loss == pytest.approx(value, rel=tol)
        reference.step(w, grads)
    for got, want in zip(m.get_weights(), w):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_fit_batches_follow_the_reference_order():
    """shuffle=False: full batch, per-example and a partial last batch are the expected updates."""
    rng = np.random.default_rng(2)
    n, d, k = 10, 5, 3
    layers = [(6, "relu", 0.0), (k, "softmax", 0.0)]
    x, y = rng.normal(size=(n, d)), rng.integers(0, k, n)
    spec = [(nm, p) for _, nm, p in layers]
    for bs in (n, 1, 4):
        opt = fm.optimizers.Adam(lr=0.05)
        m = build(layers, "sparse_categorical_crossentropy", optimizer=opt)
        w = [a.astype(np.float64) for a in m.get_weights()]
        reference = ref.Optimizer(opt.get_config(), [a.shape for a in w])
        history = m.fit(x, y, epochs=2, batch_size=bs, shuffle=False, verbose=0)
        for _ in range(2):
            total = 0.0
            for s in range(0, n, bs):
                value, grads = ref.forward_backward(w, spec, x[s:s + bs], y[s:s + bs].reshape(-1, 1),
                                                    "sparse_categorical_crossentropy", [(0, 0)] * 2)
                total += value * len(x[s:s + bs])
                reference.step(w, grads)
        for got, want in zip(m.get_weights(), w):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        assert history.history["loss"][-1] == pytest.approx(total / n, rel=1e-10)


SCHEDULES = {
    "step": (lambda: fm.schedules.StepDecay(0.1, step_size=3, gamma=0.5), lambda t: 0.1 * 0.5 ** (t // 3)),
    "exponential": (lambda: fm.schedules.ExponentialDecay(0.1, decay_steps=4, decay_rate=0.5),
                    lambda t: 0.1 * 0.5 ** (t / 4)),
    "exponential_staircase": (lambda: fm.schedules.ExponentialDecay(0.1, 4, 0.5, staircase=True),
                              lambda t: 0.1 * 0.5 ** (t // 4)),
    "inverse_time": (lambda: fm.schedules.InverseTimeDecay(0.1, decay_rate=0.5), lambda t: 0.1 / (1 + 0.5 * t)),
    "cosine_warmup": (lambda: fm.schedules.CosineDecay(0.1, decay_steps=6, min_lr=0.01, warmup_steps=3),
                      lambda t: (0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * min(t, 6) / 6)))
                      * ((t + 1) / 3 if t < 3 else 1.0)),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_drive_the_native_updates(name):
    make, formula = SCHEDULES[name]
    for t in range(10):
        assert make()(t) == pytest.approx(formula(t), rel=1e-12)
    rng = np.random.default_rng(3)
    layers = [(4, "tanh", 0.0), (2, "softmax", 0.0)]
    opt = fm.optimizers.SGD(lr=make())
    m = build(layers, "sparse_categorical_crossentropy", optimizer=opt)
    x, y = rng.normal(size=(6, 5)), rng.integers(0, 2, 6)
    w = [a.astype(np.float64) for a in m.get_weights()]
    reference = ref.Optimizer(opt.get_config(), [a.shape for a in w], lr_at=formula)
    spec = [(nm, p) for _, nm, p in layers]
    for _ in range(8):
        _, grads = ref.forward_backward(w, spec, x, y.reshape(-1, 1), "sparse_categorical_crossentropy", [(0, 0)] * 2)
        reference.step(w, grads)
        m.train_on_batch(x, y)
    for got, want in zip(m.get_weights(), w):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_cross_entropies_are_finite_for_huge_logits():
    for loss, out in (("sparse_categorical_crossentropy", "softmax"), ("binary_crossentropy", "sigmoid")):
        m = fm.Sequential([fm.Dense(3, activation=out, input_dim=2)], seed=0)
        m.compile(loss=loss, device="cpu")
        m.set_weights([np.array([[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]]), np.zeros(3)])
        x = np.array([[1.0, 0.0], [-1.0, 0.0]])
        y = np.array([1, 0]) if loss.startswith("sparse") else np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
        result = m.evaluate(x, y)
        assert np.isfinite(result["loss"]) and result["loss"] > 1e3  # confidently wrong: large but finite
        assert all(np.isfinite(g).all() for g in m.compute_gradients(x, y))
