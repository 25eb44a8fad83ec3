"""The bad-input contract, entry point by entry point: every bad argument raises
ValueError/TypeError (RuntimeError for calls before compile) with a message naming the problem,
and leaves the weights -- and the optimizer state -- exactly as they were. Divergence raises
fm.NonFiniteLossError and keeps finite weights (the last good ones).

(tests/test_bad_input.py covers fit() arguments case by case; this file sweeps every data
entry point with the same cases and checks optimizer state as well.)
"""
import numpy as np
import pytest

import fastmlp as fm

RNG = np.random.default_rng(0)
X = RNG.normal(size=(10, 4))
Y = np.arange(10) % 3


def make(loss="sparse_categorical_crossentropy", out="softmax", k=3, dtype="float32", opt=None):
    m = fm.Sequential([fm.Dense(8, activation="relu", input_dim=4), fm.Dense(k, activation=out)], seed=0)
    m.compile(optimizer=opt or fm.optimizers.Adam(lr=1e-2), loss=loss, device="cpu", dtype=dtype,
              metrics=None if loss == "mse" else ["accuracy"])
    y = {"mse": np.zeros((10, k)), "categorical_crossentropy": np.eye(k)[Y % k],
         "binary_crossentropy": (np.arange(10 * k).reshape(10, k) % 2).astype(float)}.get(loss, Y % k)
    m.train_on_batch(X, y)  # non-trivial optimizer state
    return m


def snapshot(m):
    e = m._engine
    return [w.copy() for w in m.get_weights()], e.get_state().copy(), e.step


def assert_unchanged(m, snap):
    weights, state, step = snapshot(m)
    assert all(np.array_equal(a, b) for a, b in zip(weights, snap[0]))
    assert np.array_equal(state, snap[1]) and step == snap[2]


CALLS = {
    "fit": lambda m, x, y: m.fit(x, y, epochs=1, batch_size=4, verbose=0),
    "evaluate": lambda m, x, y: m.evaluate(x, y),
    "train_on_batch": lambda m, x, y: m.train_on_batch(x, y),
    "compute_gradients": lambda m, x, y: m.compute_gradients(x, y),
    "gradcheck": lambda m, x, y: fm.gradcheck(m, x, y, max_params=3),
}

BAD_XY = [
    ("x scalar", 3.0, Y, ValueError, "2-D"),
    ("x 1-D", np.ones(4), Y, ValueError, "2-D"),
    ("x 3-D", np.ones((10, 4, 1)), Y, ValueError, "2-D"),
    ("x too few features", np.ones((10, 3)), Y, ValueError, "features"),
    ("x too many features", np.ones((10, 5)), Y, ValueError, "features"),
    ("x zero features", np.ones((10, 0)), Y, ValueError, "features"),
    ("y shorter", X, Y[:9], ValueError, "different lengths"),
    ("y longer", X, np.r_[Y, 0], ValueError, "different lengths"),
    ("y 2-D one-hot", X, np.eye(3)[Y], ValueError, "1-D"),
    ("y 3-D", X, Y.reshape(10, 1, 1), ValueError, "1-D"),
    ("label = classes", X, np.where(Y == 2, 3, Y), ValueError, "labels"),
    ("label negative", X, np.where(Y == 0, -1, Y), ValueError, "labels"),
    ("label huge", X, np.full(10, 2**40), ValueError, "labels"),
    ("label non-integer", X, Y + 0.5, ValueError, "integer"),
    ("label slightly off", X, Y + 1e-9, ValueError, "integer"),
    ("NaN in x", np.where(np.eye(10, 4) > 0, np.nan, X), Y, ValueError, "NaN"),
    ("+Inf in x", np.where(np.eye(10, 4) > 0, np.inf, X), Y, ValueError, "Inf"),
    ("-Inf in x", np.full((10, 4), -np.inf), Y, ValueError, "Inf"),
    ("x overflows float32", np.full((10, 4), 1e39), Y, ValueError, "Inf|float32"),
    ("NaN in y", X, np.where(Y == 0, np.nan, Y), ValueError, "NaN"),
    ("Inf in y", X, np.where(Y == 0, np.inf, Y), ValueError, "Inf"),
    ("empty x and y", np.ones((0, 4)), np.ones(0), ValueError, "empty"),
    ("empty y", X, np.array([]), ValueError, "empty"),
    ("x None", None, Y, ValueError, "None"),
    ("y None", X, None, ValueError, "None|no targets"),
    ("x strings", np.array([["1"] * 4] * 10), Y, TypeError, "numeric"),
    ("x objects", np.array([[object()] * 4] * 10, dtype=object), Y, TypeError, "numeric"),
    ("x mixed list", [[1, "a", 2, 3]] * 10, Y, TypeError, "numeric"),
    ("x ragged", [[1.0, 2.0], [1.0, 2.0, 3.0]], Y[:2], ValueError, "array"),
    ("x complex", X.astype(complex), Y, TypeError, "real"),
    ("y strings", X, np.array(["a"] * 10), TypeError, "numeric"),
    ("y objects", X, np.array([None] * 10, dtype=object), TypeError, "numeric"),
]


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("case", BAD_XY, ids=[c[0] for c in BAD_XY])
def test_bad_data_every_entry_point(call, case):
    _, x, y, exc, word = case
    m = make()
    snap = snapshot(m)
    with pytest.raises(exc, match=word):
        CALLS[call](m, x, y)
    assert_unchanged(m, snap)


@pytest.mark.parametrize("case", [c for c in BAD_XY if c[1] is not X], ids=[c[0] for c in BAD_XY if c[1] is not X])
def test_bad_x_predict(case):
    _, x, _, exc, word = case
    m = make()
    snap = snapshot(m)
    with pytest.raises(exc, match=word):
        m.predict(x)
    assert_unchanged(m, snap)


@pytest.mark.parametrize("loss,out,k,y,word", [
    ("mse", "linear", 2, np.ones((10, 3)), "shape"),
    ("mse", "linear", 2, np.ones(10), "shape"),
    ("mse", "linear", 1, np.ones((10, 2)), "shape"),
    ("mse", "linear", 2, np.full((10, 2), np.nan), "NaN"),
    ("mse", "linear", 2, np.full((10, 2), 1e300), "NaN or Inf|too large"),
    ("categorical_crossentropy", "softmax", 3, Y, "shape|units"),
    ("categorical_crossentropy", "softmax", 3, np.ones((10, 4)) / 4, "shape"),
    ("binary_crossentropy", "sigmoid", 2, np.ones((10, 1)), "shape"),
    ("binary_crossentropy", "sigmoid", 2, np.ones(10), "units"),
    ("binary_crossentropy", "sigmoid", 2, np.full((10, 2), np.inf), "NaN or Inf"),
    ("multiclass_hinge", "linear", 3, np.full(10, 3), "labels"),
    ("multiclass_hinge", "linear", 3, np.full(10, 0.5), "integer"),
])
def test_bad_targets_for_other_losses(loss, out, k, y, word):
    m = make(loss, out, k) if loss != "mse" else make(loss, out, k)
    snap = snapshot(m)
    for call in ("fit", "evaluate", "train_on_batch", "compute_gradients"):
        with pytest.raises(ValueError, match=word):
            CALLS[call](m, X, y)
    assert_unchanged(m, snap)


def test_harmless_inputs_are_converted():
    m = make(dtype="float64")
    ref_pred = m.predict(X)
    ref_grads = m.compute_gradients(X, Y)
    variants = [X.copy(), np.asfortranarray(X), X.tolist(),
                np.repeat(X, 2, axis=1)[:, ::2]]
    assert not variants[3].flags.c_contiguous
    for x in variants:
        np.testing.assert_array_equal(m.predict(x), ref_pred)
        for a, b in zip(m.compute_gradients(x, Y), ref_grads):
            np.testing.assert_array_equal(a, b)
    xi = (X * 10).astype(np.int32)
    np.testing.assert_allclose(m.predict(xi), m.predict(xi.astype(float)))
    xb = X > 0
    np.testing.assert_allclose(m.predict(xb), m.predict(xb.astype(float)))
    # label forms: int64, int8, integral floats, (n, 1) column, list
    for y in (Y.astype(np.int8), Y.astype(float), Y.reshape(-1, 1), Y.tolist(), Y.astype(np.uint16)):
        for a, b in zip(m.compute_gradients(X, y), ref_grads):
            np.testing.assert_array_equal(a, b)
    # everything trains
    m.fit(np.asfortranarray(X), Y.astype(float), epochs=1, batch_size=np.int64(4), verbose=0)
    m.fit(xb, Y, epochs=np.int32(1), verbose=0)


@pytest.mark.parametrize("kwargs,word", [
    (dict(batch_size=0), "batch_size"), (dict(batch_size=-1), "batch_size"), (dict(batch_size=2.0), "batch_size"),
    (dict(batch_size="4"), "batch_size"), (dict(batch_size=True), "batch_size"),
    (dict(epochs=-1), "epochs"), (dict(epochs=1.5), "epochs"), (dict(epochs="2"), "epochs"),
    (dict(initial_epoch=-1), "initial_epoch"),
    (dict(validation_split=-0.1), "validation_split"), (dict(validation_split=1.0), "validation_split"),
    (dict(validation_split=1.5), "validation_split"), (dict(validation_split="0.2"), "validation_split"),
    (dict(validation_split=0.01), "validation_split"),  # rounds to 0 validation samples out of 10
    (dict(validation_data=(X,)), "validation_data"), (dict(validation_data=X), "validation_data"),
    (dict(validation_data=(X[:, :3], Y)), "features"), (dict(validation_data=(X, Y[:5])), "different lengths"),
    (dict(validation_data=(X, np.full(10, 7))), "labels"),
    (dict(validation_data=(np.full((10, 4), np.nan), Y)), "NaN"),
])
def test_bad_fit_arguments(kwargs, word):
    m = make()
    snap = snapshot(m)
    args = dict(epochs=1, batch_size=4, verbose=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=word):
        m.fit(X, Y, **args)
    assert_unchanged(m, snap)


def test_bad_evaluate_predict_batch_size():
    m = make()
    snap = snapshot(m)
    for bs in (0, -2, 1.5, "8"):
        with pytest.raises(ValueError, match="batch_size"):
            m.evaluate(X, Y, batch_size=bs)
        with pytest.raises(ValueError, match="batch_size"):
            m.predict(X, batch_size=bs)
    assert_unchanged(m, snap)


# ------------------------------------------------------------------ names and structure

@pytest.mark.parametrize("make_bad,exc,word", [
    (lambda: fm.Dense(3, activation="relu6"), ValueError, "activation"),
    (lambda: fm.Dense(3, activation="Softmaxx"), ValueError, "activation"),
    (lambda: fm.Dense(3, activation=3), TypeError, "activation"),
    (lambda: fm.activations.LeakyReLU(-0.01), ValueError, "slope"),
    (lambda: fm.activations.LeakyReLU(float("nan")), ValueError, "slope"),
    (lambda: fm.activations.ELU(0.0), ValueError, "alpha"),
    (lambda: fm.activations.ELU(-1.0), ValueError, "alpha"),
    (lambda: fm.regularizers.L2(-1e-4), ValueError, "l2"),
    (lambda: fm.regularizers.L1(-1e-4), ValueError, "l1"),
    (lambda: fm.regularizers.L1L2(1e-3, -1e-3), ValueError, "l2"),
    (lambda: fm.regularizers.L1L2(-1e-3, 1e-3), ValueError, "l1"),
    (lambda: fm.regularizers.L2(float("inf")), ValueError, "l2"),
    (lambda: fm.Dense(3, kernel_regularizer=0.01), TypeError, "regularizer"),
    (lambda: fm.Dense(0), ValueError, "units"),
    (lambda: fm.Dense(-2), ValueError, "units"),
    (lambda: fm.Dense(3, input_dim=0), ValueError, "input_dim"),
    (lambda: fm.optimizers.SGD(lr=-0.1), ValueError, "lr"),
    (lambda: fm.optimizers.SGD(lr=float("nan")), ValueError, "lr"),
    (lambda: fm.optimizers.SGD(momentum=-0.5), ValueError, "momentum"),
    (lambda: fm.optimizers.Adagrad(eps=-1.0), ValueError, "eps"),
    (lambda: fm.optimizers.RMSprop(alpha=1.5), ValueError, "alpha"),
    (lambda: fm.optimizers.Adadelta(rho=-0.1), ValueError, "rho"),
    (lambda: fm.optimizers.Adam(betas=(0.9, 1.0)), ValueError, "beta2"),
    (lambda: fm.optimizers.AdamW(weight_decay=-1.0), ValueError, "weight_decay"),
    (lambda: fm.optimizers.NAdam(momentum_decay=-1e-3), ValueError, "momentum_decay"),
    (lambda: fm.optimizers.RAdam(betas=(1.0, 0.99)), ValueError, "beta1"),
    (lambda: fm.optimizers.LAMB(eps=-1e-6), ValueError, "eps"),
    (lambda: fm.optimizers.LAMB(lr=-1.0), ValueError, "lr"),
    (lambda: fm.optimizers.SGD(clipvalue=0.0), ValueError, "clipvalue"),
    (lambda: fm.optimizers.Adam(clipnorm=-1.0), ValueError, "clipnorm"),
    (lambda: fm.optimizers.LAMB(global_clipnorm=float("inf")), ValueError, "global_clipnorm"),
    (lambda: fm.optimizers.Adam(clipnorm=1.0, clipvalue=0.5), ValueError, "only one"),
    (lambda: fm.optimizers.RMSprop(clip_norm=1.0), TypeError, "clip_norm"),
    (lambda: fm.schedules.StepDecay(0.1, step_size=0), ValueError, "step_size"),
    (lambda: fm.schedules.CosineDecay(0.1, decay_steps=10, min_lr=1.0), ValueError, "min_lr"),
])
def test_bad_construction(make_bad, exc, word):
    with pytest.raises(exc, match=word):
        make_bad()


@pytest.mark.parametrize("layers,kwargs,exc,word", [
    ([("relu", 3)], dict(loss="mean_absolute_percentage"), ValueError, "loss"),
    ([("relu", 3)], dict(loss=5), TypeError, "loss"),
    ([("linear", 3)], dict(loss="mse", optimizer="sgdd"), ValueError, "optimizer"),
    ([("linear", 3)], dict(loss="mse", optimizer=None), TypeError, "optimizer"),
    ([("softmax", 3)], dict(loss="sparse_categorical_crossentropy", metrics=["f1_score"]), ValueError, "metric"),
    ([("softmax", 3)], dict(loss="sparse_categorical_crossentropy", metrics=[len]), TypeError, "metric"),
    ([("softmax", 3)], dict(loss="sparse_categorical_crossentropy", metrics=["accuracy"] * 9), ValueError,
     "at most 8 metrics"),
    ([("linear", 3)], dict(loss="mse", metrics=["mae", "auc"]), ValueError, "classification loss"),
    ([("softmax", 3), ("softmax", 3)], dict(loss="sparse_categorical_crossentropy"), ValueError, "softmax"),
    ([("softmax", 3), ("linear", 3)], dict(loss="mse"), ValueError, "softmax"),
    ([("relu", 3), ("softmax", 2)], dict(loss="binary_crossentropy"), ValueError, "sigmoid"),
    ([("relu", 3), ("relu", 3)], dict(loss="sparse_categorical_crossentropy"), ValueError, "softmax"),
    ([("relu", 3), ("sigmoid", 3)], dict(loss="categorical_crossentropy"), ValueError, "softmax"),
    ([("relu", 3), ("softmax", 3)], dict(loss=fm.losses.CategoricalCrossentropy(from_logits=True)), ValueError,
     "from_logits"),
    ([("relu", 3), ("linear", 3)], dict(loss="mse", device="npu"), ValueError, "device"),
    ([("relu", 3), ("linear", 3)], dict(loss="mse", dtype="int32"), ValueError, "dtype"),
])
def test_bad_compile(layers, kwargs, exc, word):
    ls = [fm.Dense(u, activation=a, input_dim=4 if i == 0 else None) for i, (a, u) in enumerate(layers)]
    m = fm.Sequential(ls, seed=0)
    with pytest.raises(exc, match=word):
        m.compile(**kwargs)
    assert not m.built


def test_failed_recompile_keeps_the_model():
    m = make()
    snap = snapshot(m)
    with pytest.raises(ValueError, match="loss"):
        m.compile(loss="nope")
    with pytest.raises(ValueError, match="optimizer"):
        m.compile(loss="sparse_categorical_crossentropy", optimizer="nope")
    assert_unchanged(m, snap)
    m.train_on_batch(X, Y)  # still works


def test_calls_before_compile_raise_runtime_error():
    m = fm.Sequential([fm.Dense(3, activation="softmax", input_dim=4)], seed=0)
    calls = [lambda: m.fit(X, Y, verbose=0), lambda: m.evaluate(X, Y), lambda: m.predict(X),
             lambda: m.train_on_batch(X, Y), lambda: m.compute_gradients(X, Y), lambda: fm.gradcheck(m, X, Y),
             lambda: m.set_weights([np.zeros((4, 3)), np.zeros(3)])]
    for call in calls:
        with pytest.raises(RuntimeError, match="compile"):
            call()
    with pytest.raises(RuntimeError, match="no weights"):
        m.get_weights()


# ------------------------------------------------------------------- set_weights

def test_bad_set_weights():
    m = make()
    snap = snapshot(m)
    good = m.get_weights()
    cases = [
        (good[:-1], ValueError, "expects 4"),
        (good + [good[-1]], ValueError, "expects 4"),
        ([], ValueError, "expects 4"),
        ([good[0].T] + good[1:], ValueError, "shape"),
        ([good[0], good[1].reshape(1, -1)] + good[2:], ValueError, "shape"),
        (good[:2] + [good[2][:, :2], good[3]], ValueError, "shape"),
        ([np.where(np.eye(4, 8) > 0, np.nan, good[0])] + good[1:], ValueError, "NaN"),
        (good[:3] + [np.full(3, np.inf)], ValueError, "Inf"),
        (good[:3] + [np.full(3, 1e300)], ValueError, "Inf"),  # overflows float32
        ([good[0].astype(str)] + good[1:], TypeError, "numeric"),
        ([good[0].astype(object)] + good[1:], TypeError, "numeric"),
        ([good[0] > 0] + good[1:], TypeError, "numeric"),
    ]
    for weights, exc, word in cases:
        with pytest.raises(exc, match=word):
            m.set_weights(weights)
        assert_unchanged(m, snap)  # all or nothing: earlier valid arrays were not written either
    m.set_weights([w.astype(np.float64) for w in good])  # other float types are fine
    m.set_weights([np.round(w * 10).astype(np.int64) for w in good])  # and integers
    assert m.get_weights()[0].dtype == np.float32


# --------------------------------------------------------------------- divergence

def _diverging(dtype="float32", opt=None):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(64, 3)) * 100, rng.normal(size=(64, 1)) * 100
    m = fm.Sequential([fm.Dense(16, activation="relu", input_dim=3), fm.Dense(1)], seed=0)
    m.compile(optimizer=opt or fm.optimizers.SGD(lr=10.0), loss="mse", device="cpu", dtype=dtype)
    return m, x, y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_too_large_learning_rate_raises_and_keeps_the_last_good_weights(dtype):
    m, x, y = _diverging(dtype)
    w0 = m.get_weights()
    with pytest.raises(fm.NonFiniteLossError, match="NaN or Inf"):
        m.fit(x, y, epochs=50, batch_size=8, shuffle=False, verbose=0)
    got = m.get_weights()
    assert all(np.isfinite(w).all() for w in got)
    # The same batches stepped one by one: the weights kept are those before the first bad loss.
    twin, _, _ = _diverging(dtype)
    twin.set_weights(w0)
    steps = 0
    with pytest.raises(fm.NonFiniteLossError):
        for _ in range(50):
            for s in range(0, 64, 8):
                twin.train_on_batch(x[s:s + 8], y[s:s + 8])
                steps += 1
    assert steps > 0
    for a, b in zip(got, twin.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert all(not np.array_equal(a, b) for a, b in zip(got[::2], w0[::2]))  # it did train before diverging


def test_divergence_with_momentum_and_history():
    m, x, y = _diverging(opt=fm.optimizers.SGD(lr=1.0, momentum=0.99))
    with pytest.raises(fm.NonFiniteLossError):
        m.fit(x, y, epochs=100, batch_size=16, verbose=0)
    assert all(np.isfinite(w).all() for w in m.get_weights())
    assert all(np.isfinite(v) for v in m.history.history.get("loss", []))
    # The model stays usable: recompiling resets the (huge) momentum buffers and keeps the weights.
    kept = m.get_weights()
    m.compile(optimizer=fm.optimizers.SGD(lr=1e-4), loss="mse", device="cpu")
    assert all(np.array_equal(a, b) for a, b in zip(kept, m.get_weights()))
    m.set_weights([np.zeros_like(w) for w in kept])
    m.fit(x / 100, y / 100, epochs=1, verbose=0)


def test_train_on_batch_with_an_overflowing_loss_changes_nothing():
    m, x, y = _diverging()
    m.train_on_batch(x[:8] / 100, y[:8] / 100)
    snap = snapshot(m)
    with pytest.raises(fm.NonFiniteLossError, match="not updated"):
        m.train_on_batch(x[:8] * 1e30, y[:8])
    assert_unchanged(m, snap)
    # and the next good step is exactly the step a twin without the bad call takes
    twin, _, _ = _diverging()
    twin.train_on_batch(x[:8] / 100, y[:8] / 100)
    m.train_on_batch(x[8:16] / 100, y[8:16] / 100)
    twin.train_on_batch(x[8:16] / 100, y[8:16] / 100)
    for a, b in zip(m.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype,lr", [("float32", 1e38), ("float64", 1e307)])
def test_train_on_batch_whose_update_overflows_changes_nothing(dtype, lr):
    """The loss is finite, but lr * gradient overflows: the step is refused, weights and state kept."""
    m, x, y = _diverging(dtype, opt=fm.optimizers.SGD(lr=lr))
    snap = snapshot(m)
    with pytest.raises(fm.NonFiniteLossError, match="not updated"):
        m.train_on_batch(x[:8], y[:8])
    assert_unchanged(m, snap)


def test_fit_whose_update_overflows_keeps_finite_weights():
    m, x, y = _diverging("float32", opt=fm.optimizers.SGD(lr=1e38))
    with pytest.raises(fm.NonFiniteLossError):
        m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert all(np.isfinite(w).all() for w in m.get_weights())


@pytest.mark.parametrize("call", [
    lambda m, x, y: m.fit(x, y, epochs=1, verbose=0),
    lambda m, x, y: m.evaluate(x, y),
    lambda m, x, y: m.train_on_batch(x, y),
    lambda m, x, y: m.upload(x, y),
])
def test_bad_targets_leave_a_model_without_input_dim_unbuilt(call):
    m = fm.Sequential([fm.Dense(8, activation="relu"), fm.Dense(3, activation="softmax")], seed=0)
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", device="cpu")
    with pytest.raises(ValueError, match="labels"):
        call(m, X, Y + 5)
    assert not m.built and m.input_dim is None
    m.fit(X[:, :2], Y, epochs=1, verbose=0)  # x of another width still builds it
    assert m.input_dim == 2


@pytest.mark.parametrize("opt", [fm.optimizers.Adam(lr=3e38), fm.optimizers.SGD(lr=3e38, momentum=0.9),
                                 fm.optimizers.RMSprop(lr=3e38)], ids=["adam", "sgd-momentum", "rmsprop"])
def test_train_on_batch_undo_restores_optimizer_state_and_step(opt):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype(np.float32), 100 * rng.normal(size=(32, 1)).astype(np.float32)
    m = fm.Sequential([fm.Dense(8, activation="tanh", input_dim=4), fm.Dense(1)], seed=0)
    m.compile(opt, "mse", device="cpu")  # gradients of ~100 times lr ~1e38 overflow float32
    e = m._engine
    e.set_state((rng.random(e.state_slots * e.num_params) * 1e-3).astype(np.float32))  # non-trivial state
    e.step = 5
    snap = snapshot(m)
    with pytest.raises(fm.NonFiniteLossError, match="not updated"):
        m.train_on_batch(x, y)
    assert_unchanged(m, snap)
