"""The activations gelu, silu/swish, softplus, selu and the losses huber (delta), mae, log_cosh:
Keras's and PyTorch's formulas written out here, against the native engine (the float64
reference, gradcheck and Hessian tests cover them too, through reference.py's lists)."""
import math

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import _core
from fastmlp._enums import LOSS_IDS, METRIC_IDS

ERF = np.vectorize(math.erf, otypes=[np.float64])


def sigmoid(z):
    return 0.5 * (1 + np.tanh(0.5 * z))


# torch.nn.GELU() (approximate='none') and keras.activations.gelu(approximate=False): x * Phi(x)
# torch.nn.SiLU / keras swish: x * sigmoid(x); torch.nn.Softplus (beta=1, no threshold) /
# keras softplus: log(1 + e^x); torch.nn.SELU / keras selu: scale * elu(x, alpha) with the
# constants below.
KERAS_TORCH = {
    "gelu": lambda z: z * 0.5 * (1.0 + ERF(z / math.sqrt(2.0))),
    "silu": lambda z: z * sigmoid(z),
    "swish": lambda z: z * sigmoid(z),
    "softplus": lambda z: np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0),
    "selu": lambda z: 1.0507009873554804934193349852946 * np.where(
        z > 0, z, 1.6732632423543772848170429916717 * np.expm1(np.minimum(z, 0))),
}


@pytest.mark.parametrize("name", sorted(KERAS_TORCH))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_activation_outputs_match_keras_and_pytorch(name, dtype):
    z = np.linspace(-30, 30, 601)[:, None]
    # An identity Dense (kernel 1, bias 0) with the activation: predict returns f(z).
    m = fm.Sequential([fm.Dense(1, name, input_dim=1)], seed=0)
    m.compile("sgd", "mse", device="cpu", dtype=dtype)
    m.set_weights([np.ones((1, 1)), np.zeros(1)])
    got = m.predict(z.astype(dtype))
    tol = 1e-14 if dtype == "float64" else 2e-6
    np.testing.assert_allclose(got, KERAS_TORCH[name](z), rtol=tol, atol=tol)
    assert np.isfinite(got).all()


@pytest.mark.parametrize("name", ["gelu", "silu", "softplus", "selu"])
def test_activation_derivatives_by_finite_differences(name):
    # The derivative the engine uses, through one hidden unit: d(mean output)/d(bias) = f'(b).
    z = np.linspace(-6, 6, 49)
    f = KERAS_TORCH[name]
    for b in z:
        m = fm.Sequential([fm.Dense(1, name, input_dim=1), fm.Dense(1, "linear")], seed=0)
        m.compile("sgd", "mse", device="cpu", dtype="float64")
        m.set_weights([np.zeros((1, 1)), np.array([b]), np.ones((1, 1)), np.zeros(1)])
        x, y = np.zeros((1, 1)), np.zeros((1, 1))
        g = m.compute_gradients(x, y)[1][0]  # dL/db1 = 2 (f(b) - 0) f'(b)
        h = 1e-6
        want = 2 * f(np.array(b)) * (f(np.array(b + h)) - f(np.array(b - h))) / (2 * h)
        assert g == pytest.approx(want, rel=1e-6, abs=1e-9), (name, b)


def linear_model(loss, k=3, d=4, dtype="float64"):
    m = fm.Sequential([fm.Dense(k, "linear", input_dim=d)], seed=0)
    m.compile("sgd", loss, device="cpu", dtype=dtype)
    return m


@pytest.mark.parametrize("delta", [0.3, 1.0, 2.5])
def test_huber_matches_keras_formula_for_any_delta(delta):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 4)), rng.normal(size=(20, 3)) * 2
    m = linear_model(fm.losses.Huber(delta=delta))
    w = [rng.normal(size=(4, 3)), rng.normal(size=3)]
    m.set_weights(w)
    d = x @ w[0] + w[1] - y
    # keras.losses.Huber: mean over the last axis of 0.5 d^2 (|d| <= delta) or delta * |d| - 0.5 delta^2
    per = np.where(np.abs(d) <= delta, 0.5 * d ** 2, delta * np.abs(d) - 0.5 * delta ** 2).mean(axis=1)
    assert m.evaluate(x, y)["loss"] == pytest.approx(per.mean(), rel=1e-13)
    dz = np.clip(d, -delta, delta) / d.shape[1] / d.shape[0]
    gw, gb = m.compute_gradients(x, y)
    np.testing.assert_allclose(gw, x.T @ dz, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gb, dz.sum(axis=0), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("loss,formula,grad", [
    ("mae", lambda d: np.abs(d), np.sign),  # keras.losses.MeanAbsoluteError, torch.nn.L1Loss
    ("log_cosh", lambda d: d + np.logaddexp(0, -2 * d) - np.log(2.0), np.tanh),  # keras.losses.LogCosh
])
def test_mae_and_log_cosh_match_keras(loss, formula, grad):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(15, 4)), rng.normal(size=(15, 3)) * 30  # large errors: log_cosh must not overflow
    m = linear_model(loss)
    w = [rng.normal(size=(4, 3)), rng.normal(size=3)]
    m.set_weights(w)
    d = x @ w[0] + w[1] - y
    assert m.evaluate(x, y)["loss"] == pytest.approx(formula(d).mean(), rel=1e-13)
    dz = grad(d) / d.size
    np.testing.assert_allclose(m.compute_gradients(x, y)[0], x.T @ dz, rtol=1e-12, atol=1e-15)


def test_huber_delta_is_kept_by_save_load_and_config(tmp_path):
    m = linear_model(fm.losses.Huber(delta=0.25))
    m.fit(np.ones((4, 4)), np.zeros((4, 3)), epochs=1, verbose=0)
    m.save(tmp_path / "h.fm")
    back = fm.load_model(tmp_path / "h.fm")
    assert isinstance(back.loss, fm.losses.Huber) and back.loss.delta == 0.25
    x, y = np.ones((2, 4)) * 3, np.zeros((2, 3))
    assert back.evaluate(x, y)["loss"] == m.evaluate(x, y)["loss"]
    assert fm.losses.from_config(fm.losses.Huber(0.7).get_config()).delta == 0.7
    assert fm.losses.get("huber").delta == 1.0 and fm.losses.get("logcosh").name == "log_cosh"


@pytest.mark.parametrize("delta", [0.0, -1.0, float("inf"), float("nan"), "a"])
def test_bad_huber_delta_is_refused_in_python_and_natively(delta):
    with pytest.raises((ValueError, TypeError), match="delta"):
        fm.losses.Huber(delta=delta)
    if isinstance(delta, float):  # the engine checks what reaches it too
        with pytest.raises(ValueError, match="delta"):
            _native_engine(delta)
    with pytest.raises(ValueError, match="belongs to huber"):
        fm.losses.from_config({"name": "mse", "delta": 1.0})


def _native_engine(delta):
    # Build the engine exactly as Sequential does, with the raw loss parameter.
    m = fm.Sequential([fm.Dense(2, "linear", input_dim=2)], seed=0)
    m.compile("sgd", "mse", device="cpu", dtype="float64")
    layers = [layer.native(m.seed, i) for i, layer in enumerate(m.layers)]
    return _core.Engine64(2, layers, LOSS_IDS["huber"], METRIC_IDS[None], "cpu", "float32", delta)


def test_regression_losses_take_the_mae_metric_and_refuse_accuracy():
    for loss in ("huber", "mae", "log_cosh", "poisson"):
        m = fm.Sequential([fm.Dense(2, "softplus" if loss == "poisson" else "linear", input_dim=3)], seed=0)
        m.compile("sgd", loss, metrics=["mae"], device="cpu", dtype="float64")
        x, y = np.ones((4, 3)), np.full((4, 2), 0.5)
        assert m.evaluate(x, y)["mae"] == pytest.approx(np.abs(m.predict(x) - y).mean(), rel=1e-13)
        with pytest.raises(ValueError, match="accuracy needs a classification loss"):
            m.compile("sgd", loss, metrics=["accuracy"], device="cpu")


def test_poisson_on_an_exponential_output_reports_mae():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(50, 3)), rng.poisson(1.0, (50, 1)).astype(float)
    m = fm.Sequential([fm.Dense(1, "exponential", input_dim=3)], seed=0)
    m.compile("sgd", "poisson", metrics=["mae"], device="cpu", dtype="float64")
    assert m.evaluate(x, y)["mae"] == pytest.approx(np.abs(m.predict(x) - y).mean(), rel=1e-13)
