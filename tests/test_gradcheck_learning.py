"""Finite-difference gradient checks and learning on real and classic problems.

Tolerance of fm.gradcheck (float64 twin, central differences with eps=1e-5): the error
|analytic - numeric| / max(|analytic|, |numeric|, 1e-4) must be < 1e-5 for smooth networks (the
1e-4 floor keeps the ~1e-10 round-off of the numeric derivative from dominating for gradients
near zero). ReLU, leaky ReLU, hinge and L1 have kinks: a difference step that crosses one is off
by O(1) for that parameter, so for those eps=1e-6 (crossings are rare) and the bound is 1e-4.
"""
import itertools

import numpy as np
import pytest

import fastmlp as fm

OUT = {"sparse_categorical_crossentropy": "softmax", "categorical_crossentropy": "softmax",
       "binary_crossentropy": "sigmoid", "mse": "linear", "multiclass_hinge": "linear"}
ACTS = {"linear": "linear", "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu",
        "leaky_relu": fm.activations.LeakyReLU(0.1), "elu": fm.activations.ELU(0.5)}
REGS = {"none": None, "l2": fm.regularizers.L2(1e-2), "l1": fm.regularizers.L1(1e-2),
        "l1l2": fm.regularizers.L1L2(1e-2, 1e-2)}
KINKED = {"relu", "leaky_relu"}


def data(loss, n, d, k, rng):
    x = rng.normal(size=(n, d))
    if loss in ("sparse_categorical_crossentropy", "multiclass_hinge"):
        return x, rng.integers(0, k, n)
    if loss == "categorical_crossentropy":
        return x, rng.dirichlet(np.ones(k), n)  # soft targets
    if loss == "binary_crossentropy":
        return x, rng.integers(0, 2, (n, k))
    return x, rng.normal(size=(n, k))


@pytest.mark.parametrize("act,loss,reg", list(itertools.product(sorted(ACTS), sorted(OUT), sorted(REGS))))
def test_gradcheck_every_combination(act, loss, reg):
    rng = np.random.default_rng(hash((act, loss, reg)) % 2**32)
    x, y = data(loss, 8, 4, 3, rng)
    layers = [fm.Dense(6, activation=ACTS[act], input_dim=4, kernel_regularizer=REGS[reg]),
              fm.Dense(5, activation=ACTS[act], kernel_regularizer=REGS[reg]),
              fm.Dense(3, activation=OUT[loss])]
    m = fm.Sequential(layers, seed=1)
    m.compile(loss=loss, device="cpu")
    kinked = act in KINKED or loss == "multiclass_hinge" or reg in ("l1", "l1l2")
    err = fm.gradcheck(m, x, y, eps=1e-6 if kinked else 1e-5)
    assert err < (1e-4 if kinked else 1e-5), err


def test_gradcheck_deep_network_and_float32_bound():
    rng = np.random.default_rng(5)
    x, y = data("sparse_categorical_crossentropy", 16, 6, 4, rng)
    layers = [fm.Dense(8, activation="tanh", input_dim=6)] + [fm.Dense(8, activation="elu") for _ in range(4)]
    m = fm.Sequential(layers + [fm.Dense(4, activation="softmax")], seed=2)
    m.compile(loss="sparse_categorical_crossentropy", device="cpu")
    assert fm.gradcheck(m, x, y) < 1e-5
    assert fm.gradcheck(m, x, y, dtype="float32") < 2e-2


def test_gradcheck_detects_a_wrong_gradient():
    rng = np.random.default_rng(6)
    x, y = data("mse", 10, 3, 2, rng)
    m = fm.Sequential([fm.Dense(4, activation="tanh", input_dim=3), fm.Dense(2)], seed=0)
    m.compile(loss="mse", device="cpu")
    worst, details = fm.gradcheck(m, x, y, return_details=True)
    assert worst < 1e-5
    # A model whose reported gradient is scaled would be caught: compare against the numeric one.
    wrong = details["analytic"] * 1.01
    err = np.abs(wrong - details["numeric"]) / np.maximum(np.maximum(np.abs(wrong), np.abs(details["numeric"])), 1e-6)
    assert err.max() > 5e-3


def test_digits_over_95_percent():
    sklearn = pytest.importorskip("sklearn.datasets")
    d = sklearn.load_digits()
    x, y = d.data / 16.0, d.target
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    tr, te = idx[:1400], idx[1400:]
    m = fm.Sequential([fm.Dense(128, activation="relu", input_dim=64), fm.Dense(10, activation="softmax")], seed=0)
    m.compile(optimizer=fm.optimizers.Adam(lr=1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"],
              device="cpu")
    h = m.fit(x[tr], y[tr], epochs=30, batch_size=32, validation_data=(x[te], y[te]), verbose=0)
    assert m.evaluate(x[te], y[te])["accuracy"] > 0.95
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert len(h.history["val_accuracy"]) == 30


def test_xor_with_one_hidden_layer():
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    y = np.array([0, 1, 1, 0])
    m = fm.Sequential([fm.Dense(8, activation="tanh", input_dim=2), fm.Dense(1, activation="sigmoid")], seed=0)
    m.compile(optimizer=fm.optimizers.Adam(lr=0.05), loss="binary_crossentropy", metrics=["accuracy"], device="cpu")
    m.fit(x, y, epochs=300, batch_size=4, verbose=0)
    assert ((m.predict(x).ravel() > 0.5) == y).all()


def test_two_spirals_with_one_hidden_layer():
    rng = np.random.default_rng(0)
    n = 300
    t = np.sqrt(rng.random(n)) * 3 * np.pi  # one and a half turns per arm
    a = np.stack([t * np.cos(t), t * np.sin(t)], 1) / (3 * np.pi)
    x = np.concatenate([a, -a]) + rng.normal(scale=0.01, size=(2 * n, 2))
    y = np.concatenate([np.zeros(n, int), np.ones(n, int)])
    m = fm.Sequential([fm.Dense(256, activation="relu", input_dim=2), fm.Dense(2, activation="softmax")], seed=0)
    m.compile(optimizer=fm.optimizers.Adam(lr=0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"],
              device="cpu")
    m.fit(x, y, epochs=500, batch_size=32, verbose=0)
    assert m.evaluate(x, y)["accuracy"] >= 0.95


def test_regression_fit_with_mse():
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 3, size=(400, 1))
    y = np.sin(x)
    m = fm.Sequential([fm.Dense(32, activation="tanh", input_dim=1), fm.Dense(1)], seed=0)
    m.compile(optimizer=fm.optimizers.Adam(lr=0.01), loss="mse", metrics=["mae"], device="cpu")
    m.fit(x, y, epochs=200, batch_size=32, verbose=0)
    pred = m.predict(x)
    r2 = 1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert r2 > 0.95
    assert m.evaluate(x, y)["mae"] < 0.15


def test_hinge_classifier_learns():
    rng = np.random.default_rng(2)
    centers = np.array([[2, 0], [-2, 0], [0, 2.5]])
    y = rng.integers(0, 3, 300)
    x = centers[y] + rng.normal(scale=0.5, size=(300, 2))
    m = fm.Sequential([fm.Dense(16, activation="relu", input_dim=2), fm.Dense(3)], seed=0)
    m.compile(optimizer=fm.optimizers.SGD(lr=0.05, momentum=0.9), loss="multiclass_hinge", metrics=["accuracy"],
              device="cpu")
    m.fit(x, y, epochs=30, batch_size=16, verbose=0)
    assert m.evaluate(x, y)["accuracy"] > 0.95


def test_seed_makes_training_bit_reproducible_and_fit_continues():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(100, 5)), rng.integers(0, 3, 100)

    def trained(seed, epochs_per_call):
        m = fm.Sequential([fm.Dense(16, activation="relu", input_dim=5), fm.Dense(3, activation="softmax")], seed=seed)
        m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", device="cpu")
        for e in epochs_per_call:
            m.fit(x, y, epochs=e, batch_size=8, verbose=0)
        return m.get_weights()

    a, b, c = trained(7, [3]), trained(7, [1, 2]), trained(8, [3])
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)  # continuing fit == one long fit
    assert any(not np.array_equal(wa, wc) for wa, wc in zip(a, c))
