"""fm.optimizers.LBFGS: torch.optim.LBFGS's iteration, run natively over the full batch.

tests/reference.py's LBFGS is a NumPy transcription of torch.optim.LBFGS (checked once against
torch 2.15 in float64: the same weights to 1e-15 after 4 steps of 20 iterations, with and
without the strong-Wolfe line search); here the native one must follow it step for step.
"""
import numpy as np
import pytest

import fastmlp as fm
import reference as ref
from test_reference import build, random_weights

SPEC = [(7, "tanh", 0.0, 0.0, 1e-2), (4, "elu", 1.0, 1e-3, 0.0), (3, "softmax", 0.0, 0.0, 0.0)]
LOSS = "sparse_categorical_crossentropy"


def problem(seed=0, rows=30):
    rng = np.random.default_rng(seed)
    w0 = random_weights(SPEC, 5, rng)
    x, y = rng.normal(size=(rows, 5)), rng.integers(0, 3, rows)
    return w0, x, y


flat, unflat = ref.flat, ref.unflat


@pytest.mark.parametrize("kwargs", [
    dict(lr=1.0),
    dict(lr=0.7, max_iter=6, history_size=3),
    dict(lr=1.0, line_search_fn="strong_wolfe"),
    dict(lr=1.0, max_iter=9, max_eval=11, history_size=4, line_search_fn="strong_wolfe"),
], ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_lbfgs_matches_reference_step_for_step(kwargs):
    w0, x, y = problem()
    m = build(SPEC, 5, LOSS, optimizer=fm.optimizers.LBFGS(**kwargs))
    m.set_weights(w0)
    r = ref.LBFGS(**kwargs)

    def fun(v):
        val, g = ref.gradients(SPEC, unflat(v, w0), x, y, LOSS)
        return val, flat(g)

    # Quasi-Newton iterations amplify rounding: the reference itself, started 1e-15 away, ends up
    # to ~1e-3 away after 80 iterations here. So each step must agree with the reference as well
    # as the reference agrees with its own perturbed run (with a factor 100 of slack), and to
    # 1e-10 while that sensitivity is below rounding; a wrong formula differs at O(1) at once.
    shaken = ref.LBFGS(**kwargs)
    w, w_shaken = flat(w0), flat(w0) * (1 + 1e-15)
    for step in range(4):
        got_loss = m.train_on_batch(x, y)
        w, want_loss = r.step(w, fun)
        w_shaken, _ = shaken.step(w_shaken, fun)
        tol = max(1e-10, 100 * np.abs(w - w_shaken).max())
        assert abs(got_loss - want_loss) <= max(1e-10 * abs(want_loss), tol)
        np.testing.assert_allclose(flat(m.get_weights()), w, rtol=0, atol=tol)
    assert fun(w)[0] < 0.5 * fun(flat(w0))[0]  # it really optimized


def test_fit_runs_one_lbfgs_step_per_epoch_on_the_whole_set():
    w0, x, y = problem(1)
    m = build(SPEC, 5, LOSS, optimizer=fm.optimizers.LBFGS(line_search_fn="strong_wolfe"))
    m.set_weights(w0)
    h = m.fit(x, y, epochs=3, verbose=0)  # batch_size None: all rows
    twin = build(SPEC, 5, LOSS, optimizer=fm.optimizers.LBFGS(line_search_fn="strong_wolfe"))
    twin.set_weights(w0)
    losses = [twin.train_on_batch(x, y) for _ in range(3)]
    np.testing.assert_array_equal(flat(m.get_weights()), flat(twin.get_weights()))
    np.testing.assert_allclose(h.history["loss"], losses, rtol=1e-12)


def test_lbfgs_learns_digits_in_float32():
    sk = pytest.importorskip("sklearn.datasets")
    d = sk.load_digits()
    x, y = d.data / 16.0, d.target
    m = fm.Sequential([fm.Dense(32, activation="tanh", input_dim=64), fm.Dense(10, activation="softmax")], seed=0)
    m.compile(optimizer=fm.optimizers.LBFGS(line_search_fn="strong_wolfe"), loss=LOSS, metrics=["accuracy"],
              device="cpu")
    h = m.fit(x, y, epochs=5, verbose=0)
    assert h.history["loss"][-1] < 0.2 * h.history["loss"][0]
    assert (m.predict(x).argmax(1) == y).mean() > 0.97


def test_lbfgs_bad_settings_raise():
    for kwargs, word in [(dict(line_search_fn="armijo"), "line_search_fn"), (dict(max_iter=0), "max_iter"),
                         (dict(history_size=0), "history_size"), (dict(lr=-1.0), "lr"),
                         (dict(lr=fm.schedules.StepDecay(1.0, 2)), "schedule"),
                         (dict(tolerance_grad=-1.0), "tolerance_grad")]:
        with pytest.raises(ValueError, match=word):
            fm.optimizers.LBFGS(**kwargs)


def test_lbfgs_refuses_random_layers_and_minibatches_leaving_the_model_alone():
    m = fm.Sequential([fm.Dense(6, activation="relu", input_dim=4), fm.Dropout(0.2), fm.Dense(3, activation="softmax")],
                      seed=0)
    m.compile(optimizer="adam", loss=LOSS, device="cpu")
    with pytest.raises(ValueError, match="Dropout"):
        m.compile(optimizer=fm.optimizers.LBFGS(), loss=LOSS, device="cpu")
    assert isinstance(m.optimizer, fm.optimizers.Adam)
    w0, x, y = problem(2)
    m = build(SPEC, 5, LOSS, optimizer=fm.optimizers.LBFGS())
    m.set_weights(w0)
    with pytest.raises(ValueError, match="host arrays"):
        m.fit(m.upload(x, y), batch_size=8, epochs=1, verbose=0)
    np.testing.assert_array_equal(flat(m.get_weights()), flat(w0))


def test_fit_on_batches_takes_one_lbfgs_step_per_batch():
    # torch users call step(closure) on each batch: fit with batch_size < rows does the same.
    w0, x, y = problem(6, rows=30)
    m = build(SPEC, 5, LOSS, optimizer=fm.optimizers.LBFGS(max_iter=4))
    m.set_weights(w0)
    h = m.fit(x, y, batch_size=12, epochs=2, shuffle=False, verbose=0)
    twin = build(SPEC, 5, LOSS, optimizer=fm.optimizers.LBFGS(max_iter=4))
    twin.set_weights(w0)
    losses = [twin.train_on_batch(x[a:a + 12], y[a:a + 12]) for _ in range(2) for a in (0, 12, 24)]
    np.testing.assert_array_equal(flat(m.get_weights()), flat(twin.get_weights()))
    want = [np.average(losses[e * 3:e * 3 + 3], weights=[12, 12, 6]) for e in range(2)]
    np.testing.assert_allclose(h.history["loss"], want, rtol=1e-12)


def test_lbfgs_nonfinite_step_keeps_the_weights():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 3)) * 1e3
    y = x @ np.array([[0.5], [-1.0], [2.0]])  # an exact linear fit exists
    m = fm.Sequential([fm.Dense(1, input_dim=3)], seed=0)
    m.compile(optimizer=fm.optimizers.LBFGS(lr=1e300), loss="mse", device="cpu", dtype="float64")
    w0 = flat(m.get_weights())
    with pytest.raises(fm.NonFiniteLossError):
        m.train_on_batch(x, y)
    np.testing.assert_array_equal(flat(m.get_weights()), w0)
    m.compile(optimizer=fm.optimizers.LBFGS(), loss="mse", device="cpu", dtype="float64")  # a sane lr learns
    losses = [m.train_on_batch(x, y) for _ in range(3)]
    assert losses[-1] < 1e-6 * losses[0]


def test_lbfgs_config_round_trips():
    opt = fm.optimizers.LBFGS(lr=0.5, max_iter=7, history_size=5, line_search_fn="strong_wolfe")
    back = fm.optimizers.from_config(opt.get_config())
    assert isinstance(back, fm.optimizers.LBFGS) and back.get_config() == opt.get_config()
    assert back.max_eval == 8


def test_fit_batch_size_none_means_32_for_per_step_optimizers():
    w0, x, y = problem(4, rows=70)
    a, b = (build(SPEC, 5, LOSS, optimizer=fm.optimizers.Adam(1e-2)) for _ in range(2))
    a.set_weights(w0)
    b.set_weights(w0)
    a.fit(x, y, epochs=2, verbose=0)
    b.fit(x, y, batch_size=32, epochs=2, verbose=0)
    np.testing.assert_array_equal(flat(a.get_weights()), flat(b.get_weights()))


def test_the_core_checks_lbfgs_configs_itself():
    # fastmlp._core is public: a config the Python class would refuse must not reach the iteration.
    from fastmlp import _core

    w0, x, y = problem(5)
    m = build(SPEC, 5, LOSS, optimizer=fm.optimizers.LBFGS())
    m.set_weights(w0)
    data, _ = m._data(x, y)
    for field, value in (("history_size", 0), ("max_eval", 0), ("max_iter", 0), ("lr", float("nan"))):
        cfg = m.optimizer.lbfgs_config()
        setattr(cfg, field, value)
        with pytest.raises(ValueError, match="LBFGS"):
            m._engine.lbfgs_step(data, cfg)
    np.testing.assert_array_equal(flat(m.get_weights()), flat(w0))
