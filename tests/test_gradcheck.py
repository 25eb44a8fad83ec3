"""fm.gradcheck: analytic gradients (compute_gradients) against central differences of the loss.

Tolerance. fm.gradcheck returns the worst, over the checked parameters, of
    |analytic - numeric| / max(|analytic|, |numeric|, floor)
with floor = 1e-4 for the float64 twin (default) and 1e-3 for float32. The floor keeps the
round-off of the numeric derivative (~1e-16 / eps in float64) from dominating for gradients
near zero.

* Smooth networks (linear, sigmoid, tanh, ELU with alpha = 1, cross-entropies, MSE, L2):
  eps = 1e-5, truncation error O(eps^2) ~ 1e-10 and round-off ~1e-11 / floor ~ 1e-7, so we
  require < 1e-6.
* Networks with kinks (ReLU, leaky ReLU, ELU with alpha != 1 -- its slope jumps from alpha to 1
  at 0 --, the hinge loss, L1): a difference step crossing a kink is off by O(1) for that
  parameter, so eps = 1e-6 makes crossings rare (the data are fixed by seeds, so a passing case
  always passes) and the bound is 1e-4 (round-off ~1e-10 / floor = 1e-6).
* float32 (checks the model's own float32 engine, eps = 1e-2): bound 2e-2 for smooth networks
  (observed <= 4e-3; ELU is left out there: its second derivative jumps at 0, which a step of
  1e-2 feels).

Every test here can fail: test_gradcheck_catches_* feed gradcheck a model whose gradients or
loss are deliberately wrong and require a large error.
"""
import itertools
import zlib

import numpy as np
import pytest

import fastmlp as fm
import reference as ref

SMOOTH_BOUND, KINK_BOUND, F32_BOUND = 1e-6, 1e-4, 2e-2

ACTS = {"linear": "linear", "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu",
        "leaky_relu": fm.activations.LeakyReLU(0.1), "elu": fm.activations.ELU(1.0),
        "elu_0.5": fm.activations.ELU(0.5), "softplus": "softplus", "selu": "selu", "gelu": "gelu", "silu": "swish"}
KINKED_ACTS = {"relu", "leaky_relu", "elu_0.5", "selu"}  # selu: its derivative jumps at 0 (1.05 vs 1.76)
LOSS_OUT = ref.LOSS_OUTPUTS  # (loss, output activation, from_logits)
REGS = {"none": None, "l2": fm.regularizers.L2(1e-2), "l1": fm.regularizers.L1(1e-2),
        "l1l2": fm.regularizers.L1L2(1e-2, 2e-2)}
LOSS_CLASS = {"sparse_categorical_crossentropy": fm.losses.SparseCategoricalCrossentropy,
              "categorical_crossentropy": fm.losses.CategoricalCrossentropy,
              "binary_crossentropy": fm.losses.BinaryCrossentropy}


def seed_of(*parts):
    return zlib.crc32("/".join(map(str, parts)).encode())  # stable across runs (unlike hash())


def make_data(loss, n, d, k, rng):
    x = rng.normal(size=(n, d))
    if loss in ("sparse_categorical_crossentropy", "multiclass_hinge"):
        return x, rng.integers(0, k, n)
    if loss == "categorical_crossentropy":
        return x, rng.dirichlet(np.ones(k), n)
    if loss == "binary_crossentropy":
        return x, rng.integers(0, 2, (n, k)).astype(float)
    if loss == "poisson":
        return x, rng.poisson(1.5, (n, k)).astype(float)
    return x, rng.normal(size=(n, k))


def make_model(act, loss, out, logits, reg=None, hidden=(6, 5), d=4, k=3, seed=1, dtype="float64"):
    layers = []
    for i, units in enumerate(hidden):
        layers.append(fm.Dense(units, activation=ACTS[act], input_dim=d if i == 0 else None,
                               kernel_regularizer=reg, kernel_initializer="glorot_normal"))
    layers.append(fm.Dense(k, activation=out, kernel_regularizer=reg))
    m = fm.Sequential(layers, seed=seed)
    m.compile(optimizer="sgd", loss=LOSS_CLASS[loss](from_logits=True) if logits else loss, device="cpu", dtype=dtype)
    # non-zero biases, so every bias path is exercised
    w = m.get_weights()
    rng = np.random.default_rng(seed)
    m.set_weights([a if a.ndim == 2 else rng.normal(scale=0.1, size=a.shape) for a in w])
    return m


def is_kinked(act, loss, reg):
    return act in KINKED_ACTS or loss in ("multiclass_hinge", "mae") or reg in ("l1", "l1l2")


COMBOS = list(itertools.product(sorted(ACTS), LOSS_OUT, sorted(REGS)))


@pytest.mark.parametrize("act,lo,reg", COMBOS,
                         ids=[f"{a}-{l[0]}-{l[1]}{'-logits' if l[2] else ''}-{r}" for a, l, r in COMBOS])
def test_gradcheck_every_combination(act, lo, reg):
    loss, out, logits = lo
    rng = np.random.default_rng(seed_of(act, loss, out, logits, reg))
    x, y = make_data(loss, 8, 4, 3, rng)
    m = make_model(act, loss, out, logits, REGS[reg], seed=seed_of(reg, act) % 1000)
    before = m.get_weights()
    kinked = is_kinked(act, loss, reg)
    err = fm.gradcheck(m, x, y, eps=1e-6 if kinked else 1e-5)
    assert err < (KINK_BOUND if kinked else SMOOTH_BOUND), err
    # gradcheck works on a twin: the model itself is untouched
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), before))


@pytest.mark.parametrize("act", sorted(ACTS))
def test_gradcheck_deep_network(act):
    rng = np.random.default_rng(seed_of("deep", act))
    x, y = make_data("sparse_categorical_crossentropy", 12, 5, 4, rng)
    m = make_model(act, "sparse_categorical_crossentropy", "softmax", False, fm.regularizers.L2(1e-3),
                   hidden=(7, 6, 6, 5), d=5, k=4, seed=3)
    kinked = is_kinked(act, "sparse_categorical_crossentropy", "l2")
    err = fm.gradcheck(m, x, y, eps=1e-6 if kinked else 1e-5)
    assert err < (KINK_BOUND if kinked else SMOOTH_BOUND), err


@pytest.mark.parametrize("loss,out,logits", [l for l in LOSS_OUT if l[0] != "multiclass_hinge"])
def test_gradcheck_deep_tanh_every_loss(loss, out, logits):
    rng = np.random.default_rng(seed_of("deep-loss", loss, out))
    x, y = make_data(loss, 10, 3, 3, rng)
    m = make_model("tanh", loss, out, logits, None, hidden=(6, 6, 5, 4), d=3, k=3, seed=4)
    assert fm.gradcheck(m, x, y) < SMOOTH_BOUND


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "linear"])  # ELU's curvature jumps at 0: eps=1e-2 is too coarse
@pytest.mark.parametrize("loss,out,logits", [("sparse_categorical_crossentropy", "softmax", False),
                                             ("binary_crossentropy", "sigmoid", False), ("mse", "linear", False)])
def test_gradcheck_float32(act, loss, out, logits):
    rng = np.random.default_rng(seed_of("f32", act, loss))
    x, y = make_data(loss, 16, 4, 3, rng)
    m = make_model(act, loss, out, logits, fm.regularizers.L2(1e-3), seed=5, dtype="float32")
    err = fm.gradcheck(m, x, y, dtype="float32")
    assert err < F32_BOUND, err
    # and the float64 twin of the same float32 model is far more accurate
    assert fm.gradcheck(m, x, y) < SMOOTH_BOUND


def test_gradcheck_details_and_subset():
    rng = np.random.default_rng(0)
    x, y = make_data("mse", 8, 4, 3, rng)
    m = make_model("tanh", "mse", "linear", False, fm.regularizers.L2(1e-2))
    worst, d = fm.gradcheck(m, x, y, return_details=True)
    n_params = m.count_params()
    assert d["analytic"].shape == d["numeric"].shape == d["error"].shape == (n_params,)
    assert worst == pytest.approx(d["error"].max())
    flat = np.concatenate([g.ravel() for g in m.compute_gradients(x, y)])
    np.testing.assert_allclose(d["analytic"], flat, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d["numeric"], flat, rtol=1e-6, atol=1e-9)
    worst_sub, d_sub = fm.gradcheck(m, x, y, max_params=10, return_details=True)
    assert d_sub["index"].size == 10 and worst_sub <= worst + 1e-15
    np.testing.assert_allclose(d_sub["analytic"], flat[d_sub["index"]], rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------- the check can fail

class _WrongEngine:
    """Wraps a native engine; distorts its analytic gradients or its loss."""

    def __init__(self, engine, grad_fn=None, loss_fn=None):
        self._e, self._grad_fn, self._loss_fn = engine, grad_fn, loss_fn

    def __getattr__(self, name):
        return getattr(self._e, name)

    def compute_gradients(self, data):
        loss, g = self._e.compute_gradients(data)
        return loss, (self._grad_fn(g.copy()) if self._grad_fn else g)

    def training_loss(self, data):  # the loss gradcheck differentiates numerically
        loss = self._e.training_loss(data)
        return self._loss_fn(loss, self._e.get_params()) if self._loss_fn else loss


def _sabotage(monkeypatch, m, **kw):
    original = m._new_engine
    monkeypatch.setattr(m, "_new_engine", lambda *a, **k: _WrongEngine(original(*a, **k), **kw))


def _good_model():
    rng = np.random.default_rng(1)
    x, y = make_data("sparse_categorical_crossentropy", 8, 4, 3, rng)
    m = make_model("tanh", "sparse_categorical_crossentropy", "softmax", False, fm.regularizers.L2(1e-2))
    assert fm.gradcheck(m, x, y) < SMOOTH_BOUND  # the honest model passes
    return m, x, y


def test_gradcheck_catches_one_wrong_gradient_entry(monkeypatch):
    m, x, y = _good_model()

    def bump(g):
        g[7] *= 1.01  # a 1% error in one kernel entry
        return g
    _sabotage(monkeypatch, m, grad_fn=bump)
    worst, d = fm.gradcheck(m, x, y, return_details=True)
    assert worst > 5e-3 and int(np.argmax(d["error"])) == 7


def test_gradcheck_catches_a_missing_bias_gradient(monkeypatch):
    m, x, y = _good_model()
    n_w1 = 4 * 6
    _sabotage(monkeypatch, m, grad_fn=lambda g: np.concatenate([g[:n_w1], np.zeros(6), g[n_w1 + 6:]]))
    assert fm.gradcheck(m, x, y) > 0.5


def test_gradcheck_catches_a_forgotten_regularization_gradient(monkeypatch):
    """A loss with an L2 term whose gradient is left out of compute_gradients."""
    m, x, y = _good_model()
    _sabotage(monkeypatch, m, loss_fn=lambda loss, p: loss + 0.05 * float(np.sum(p[:24] ** 2)))
    assert fm.gradcheck(m, x, y) > 1e-2


def test_gradcheck_catches_a_sign_error(monkeypatch):
    m, x, y = _good_model()
    _sabotage(monkeypatch, m, grad_fn=lambda g: -g)
    assert fm.gradcheck(m, x, y) > 1.0


def test_perturbed_details_give_large_errors():
    """The error formula itself: re-evaluated on perturbed analytic gradients it grows."""
    m, x, y = _good_model()
    worst, d = fm.gradcheck(m, x, y, return_details=True)
    a = d["analytic"].copy()
    a[3] += 1e-2 * max(abs(a[3]), 1e-2)
    err = np.abs(a - d["numeric"]) / np.maximum(np.maximum(np.abs(a), np.abs(d["numeric"])), 1e-4)
    assert worst < SMOOTH_BOUND and err.max() > 1e-3
