"""fm.hvp and fm.hessian: exact Hessian-vector products (the R-operator in the engine).

Checked against 4th-order central differences of the float64 NumPy reference's gradient
(truncation ~h^4, h = 5e-4), which is accurate to ~1e-9 here, for every activation and loss."""
import numpy as np
import pytest

import fastmlp as fm
import reference as ref
from test_reference import build, random_weights, targets

ACTIVATIONS = [("sigmoid", 0.0), ("tanh", 0.0), ("elu", 0.7), ("relu", 0.0), ("leaky_relu", 0.1), ("linear", 0.0),
               ("exponential", 0.0), ("softplus", 0.0), ("selu", 0.0)]
LOSSES = [("sparse_categorical_crossentropy", "softmax"), ("categorical_crossentropy", "softmax"),
          ("binary_crossentropy", "sigmoid"), ("mse", "linear"), ("mse", "tanh"), ("mse", "sigmoid"),
          ("multiclass_hinge", "linear"), ("multiclass_hinge", "tanh"), ("poisson", "exponential"),
          ("poisson", "sigmoid"), ("mse", "gelu"), ("mse", "silu"), ("poisson", "softplus"), ("huber", "tanh"),
          ("log_cosh", "sigmoid"), ("log_cosh", "linear")]


flat, unflat = ref.flat, ref.unflat


def fd_hvp(spec, w, x, y, loss, v, h=5e-4):
    def g(t):
        return flat(ref.gradients(spec, unflat(flat(w) + t * v, w), x, y, loss)[1])
    return (-g(2 * h) + 8 * g(h) - 8 * g(-h) + g(-2 * h)) / (12 * h)


def case(act, loss, out, seed=0, rows=12):
    rng = np.random.default_rng(seed)
    k = 3
    spec = [(5, act[0], act[1], 0.0, 1e-2), (4, "tanh", 0.0, 1e-3, 0.0), (k, out, 0.0, 0.0, 0.0)]
    w = random_weights(spec, 4, rng)
    x = rng.normal(size=(rows, 4))
    y = targets(loss, rows, k, rng)
    return spec, w, x, y, rng


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: a[0])
@pytest.mark.parametrize("loss,out", LOSSES, ids=lambda v: str(v))
def test_hvp_matches_finite_differences_of_the_reference(act, loss, out):
    spec, w, x, y, rng = case(act, loss, out)
    m = build(spec, 4, loss)
    m.set_weights(w)
    v = rng.normal(size=sum(a.size for a in w))
    got = flat(fm.hvp(m, x, y, unflat(v, w)))
    want = fd_hvp(spec, w, x, y, loss, v)
    assert np.abs(got - want).max() <= 1e-7 * max(1.0, np.abs(want).max()), np.abs(got - want).max()
    assert np.abs(want).max() > 1e-3  # a zero Hessian would pass trivially


def test_hessian_is_symmetric_and_matches_its_products():
    spec, w, x, y, rng = case(("tanh", 0.0), "sparse_categorical_crossentropy", "softmax", seed=3)
    m = build(spec, 4, "sparse_categorical_crossentropy")
    m.set_weights(w)
    H = fm.hessian(m, x, y)
    n = H.shape[0]
    assert n == sum(a.size for a in w)
    np.testing.assert_allclose(H, H.T, atol=1e-12)
    v = rng.normal(size=n)
    np.testing.assert_allclose(H @ v, fm.hvp(m, x, y, v), rtol=1e-10, atol=1e-12)
    eig = np.linalg.eigvalsh((H + H.T) / 2)
    assert eig.min() < 0 < eig.max()  # a tanh network's loss is not convex: both signs show up


def test_hvp_float32_agrees_with_float64():
    spec, w, x, y, rng = case(("sigmoid", 0.0), "binary_crossentropy", "sigmoid", seed=5, rows=40)
    m64, m32 = build(spec, 4, "binary_crossentropy"), build(spec, 4, "binary_crossentropy", dtype="float32")
    m64.set_weights(w)
    m32.set_weights(w)
    v = rng.normal(size=sum(a.size for a in w))
    a, b = fm.hvp(m64, x, y, v), fm.hvp(m32, x, y, v)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


def test_hvp_and_hessian_refuse_bad_input_leaving_the_model_alone():
    spec, w, x, y, rng = case(("tanh", 0.0), "sparse_categorical_crossentropy", "softmax")
    m = build(spec, 4, "sparse_categorical_crossentropy")
    m.set_weights(w)
    n = sum(a.size for a in w)
    with pytest.raises(ValueError, match="parameters"):
        fm.hvp(m, x, y, np.ones(n + 1))
    with pytest.raises(ValueError, match="shape"):
        fm.hvp(m, x, y, [np.ones((2, 2))] + [np.ones_like(a) for a in w[1:]])
    with pytest.raises(ValueError, match="NaN"):
        fm.hvp(m, x, y, np.full(n, np.nan))
    with pytest.raises(ValueError, match="max_params"):
        fm.hessian(m, x, y, max_params=10)
    dropout = fm.Sequential([fm.Dense(4, "relu", input_dim=4), fm.Dropout(0.5), fm.Dense(3, "softmax")], seed=0)
    dropout.compile(loss="sparse_categorical_crossentropy", device="cpu")
    with pytest.raises(ValueError, match="Dropout"):
        fm.hvp(dropout, x, y, np.ones(dropout.count_params()))
    for a, b in zip(m.get_weights(), w):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------- Newton, HessianFree

def softmax_regression(opt, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(200, 5)), rng.integers(0, 3, 200)
    m = fm.Sequential([fm.Dense(3, "softmax", input_dim=5, kernel_regularizer=fm.regularizers.L2(1e-2))], seed=0)
    m.compile(optimizer=opt, loss="sparse_categorical_crossentropy", device="cpu", dtype="float64")
    return m, x, y


def grad_norm(m, x, y):
    return float(np.linalg.norm(np.concatenate([a.ravel() for a in m.compute_gradients(x, y)])))


def test_newton_converges_quadratically_on_softmax_regression():
    # Convex (L2 makes it strictly so) but with a nearly singular direction (adding a constant to
    # every class's logit changes nothing but the penalty): pure Newton is unstable there, the
    # damped steps converge, and the last ones square the gradient norm.
    m, x, y = softmax_regression(fm.optimizers.Newton())
    norms, losses = [], []
    for _ in range(10):
        losses.append(m.train_on_batch(x, y))
        norms.append(grad_norm(m, x, y))
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    first = next(i for i, n in enumerate(norms) if n < 1e-10)
    assert first <= 8, norms
    # quadratic: from 1e-2-ish to below 1e-10 in at most three steps
    assert norms[first - 3] < 1e-1 and norms[first - 1] < 1e-4, norms


def test_hessian_free_lowers_the_loss_every_step_and_reaches_a_small_gradient():
    m, x, y = softmax_regression(fm.optimizers.HessianFree(cg_iters=30, damping=1e-3))
    losses = [m.train_on_batch(x, y) for _ in range(8)]
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    assert grad_norm(m, x, y) < 1e-6


def test_second_order_methods_train_a_small_tanh_net_through_fit():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 4))
    y = (x[:, 0] * x[:, 1] > 0).astype(int)
    for opt in (fm.optimizers.Newton(max_params=200), fm.optimizers.HessianFree()):
        m = fm.Sequential([fm.Dense(8, "tanh", input_dim=4), fm.Dense(2, "softmax")], seed=1)
        m.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu")
        h = m.fit(x, y, epochs=15, verbose=0)
        assert h.history["loss"][-1] < 0.5 * h.history["loss"][0], (type(opt).__name__, h.history["loss"])


def test_second_order_bad_settings_and_models_raise_leaving_the_model_alone():
    for make, word in [(lambda: fm.optimizers.Newton(damping=0.0), "damping"),
                       (lambda: fm.optimizers.Newton(max_params=0), "max_params"),
                       (lambda: fm.optimizers.HessianFree(cg_iters=0), "cg_iters"),
                       (lambda: fm.optimizers.HessianFree(damping=-1.0), "damping")]:
        with pytest.raises(ValueError, match=word):
            make()
    m = fm.Sequential([fm.Dense(40, "tanh", input_dim=60), fm.Dense(3, "softmax")], seed=0)  # 2563 > 2000
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", device="cpu")
    w = m.get_weights()
    with pytest.raises(ValueError, match="max_params"):
        m.compile(optimizer=fm.optimizers.Newton(), loss="sparse_categorical_crossentropy", device="cpu")
    assert isinstance(m.optimizer, fm.optimizers.Adam)
    for a, b in zip(m.get_weights(), w):
        np.testing.assert_array_equal(a, b)
    bn = fm.Sequential([fm.Dense(4, input_dim=3), fm.LayerNormalization(), fm.Dense(2, "softmax")], seed=0)
    with pytest.raises(ValueError, match="Dense layers only"):
        bn.compile(optimizer=fm.optimizers.HessianFree(), loss="sparse_categorical_crossentropy", device="cpu")


def test_second_order_configs_round_trip():
    for opt in (fm.optimizers.Newton(damping=1e-3, max_params=500), fm.optimizers.HessianFree(cg_iters=7)):
        back = fm.optimizers.from_config(opt.get_config())
        assert type(back) is type(opt) and back.get_config() == opt.get_config()


def test_k_products_from_one_call_equal_k_calls():
    spec, w, x, y, rng = case(("sigmoid", 0.0), "mse", "tanh", seed=8)
    m = build(spec, 4, "mse")
    m.set_weights(w)
    data, _ = m._data(x, y)
    V = rng.normal(size=(3, sum(a.size for a in w)))
    together = m._engine.hessian_vector_product(data, V)[1]
    for row, v in zip(together, V):
        np.testing.assert_array_equal(row, m._engine.hessian_vector_product(data, v)[1])
    with pytest.raises(ValueError, match="k rows"):
        m._engine.hessian_vector_product(data, V[:, :-1])


@pytest.mark.parametrize("act", ["gelu", "silu"])
def test_hvp_refuses_gelu_and_silu_hidden_layers(act):
    # Their derivative needs the layer's input, which the R-operator's Dense-only pass does not keep.
    m = fm.Sequential([fm.Dense(4, act, input_dim=3), fm.Dense(2, "linear")], seed=0)
    m.compile("sgd", "mse", device="cpu", dtype="float64")
    x, y = np.ones((5, 3)), np.zeros((5, 2))
    with pytest.raises(ValueError, match="GELU or SiLU"):
        fm.hvp(m, x, y, [np.ones_like(w) for w in m.get_weights()])
