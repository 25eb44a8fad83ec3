"""Every kind of bad input raises a ValueError/TypeError naming the problem (RuntimeError for
calls out of order), never crashes, and leaves the model's weights unchanged."""
import numpy as np
import pytest

import fastmlp as fm


@pytest.fixture
def model():
    m = fm.Sequential([fm.Dense(8, activation="relu", input_dim=4), fm.Dense(3, activation="softmax")], seed=0)
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu")
    return m


X = np.random.default_rng(0).normal(size=(10, 4))
Y = np.arange(10) % 3


def unchanged(m, before):
    return all(np.array_equal(a, b) for a, b in zip(m.get_weights(), before))


BAD_FIT = [
    ("x 1-D", dict(x=np.ones(4)), ValueError, "2-D"),
    ("x 3-D", dict(x=np.ones((10, 4, 1))), ValueError, "2-D"),
    ("wrong feature count", dict(x=np.ones((10, 5))), ValueError, "features"),
    ("length mismatch", dict(y=Y[:9]), ValueError, "different lengths"),
    ("label too large", dict(y=np.full(10, 3)), ValueError, "labels"),
    ("negative label", dict(y=np.full(10, -1)), ValueError, "labels"),
    ("non-integer label", dict(y=np.full(10, 0.5)), ValueError, "integer"),
    ("one-hot for sparse loss", dict(y=np.eye(3)[Y]), ValueError, "1-D"),
    ("NaN in x", dict(x=np.where(np.eye(10, 4) > 0, np.nan, 0.0)), ValueError, "NaN"),
    ("Inf in x", dict(x=np.full((10, 4), np.inf)), ValueError, "Inf"),
    ("NaN in y", dict(y=np.full(10, np.nan)), ValueError, "NaN"),
    ("empty x", dict(x=np.ones((0, 4)), y=np.ones(0)), ValueError, "empty"),
    ("string x", dict(x=np.array([["a"] * 4] * 10)), TypeError, "numeric"),
    ("object x", dict(x=np.array([[object()] * 4] * 10, dtype=object)), TypeError, "numeric"),
    ("complex x", dict(x=np.ones((10, 4), dtype=complex)), TypeError, "real"),
    ("ragged x", dict(x=[[1, 2], [1, 2, 3]]), ValueError, "array"),
    ("too large for float32", dict(x=np.full((10, 4), 1e300)), ValueError, "float32"),
    ("batch_size 0", dict(batch_size=0), ValueError, "batch_size"),
    ("batch_size negative", dict(batch_size=-3), ValueError, "batch_size"),
    ("batch_size float", dict(batch_size=2.5), ValueError, "batch_size"),
    ("epochs negative", dict(epochs=-1), ValueError, "epochs"),
    ("validation_split 1", dict(validation_split=1.0), ValueError, "validation_split"),
    ("validation_data not a pair", dict(validation_data=(X,)), ValueError, "validation_data"),
    ("validation labels bad", dict(validation_data=(X, np.full(10, 9))), ValueError, "labels"),
    ("verbose bad", dict(verbose=7), ValueError, "verbose"),
]


@pytest.mark.parametrize("case", BAD_FIT, ids=[c[0] for c in BAD_FIT])
def test_bad_fit_arguments_raise_and_leave_weights(model, case):
    _, kwargs, exc, word = case
    args = dict(x=X, y=Y, epochs=1, batch_size=4, verbose=0)
    args.update(kwargs)
    before = model.get_weights()
    with pytest.raises(exc, match=word):
        model.fit(**args)
    assert unchanged(model, before)


def test_harmless_conversions_are_accepted(model):
    for x in (X.astype(np.float64), X.astype(np.int32), np.asfortranarray(X), X[:, ::1].copy()[::1],
              (X > 0), X.tolist()):
        model.fit(x, Y, epochs=1, batch_size=5, verbose=0)
    model.fit(X, Y.astype(np.float64), epochs=1, verbose=0)  # integral floats are labels
    model.fit(X, Y.reshape(-1, 1), epochs=1, verbose=0)
    noncontiguous = np.ones((10, 8))[:, ::2]
    assert not noncontiguous.flags.c_contiguous
    model.fit(noncontiguous, Y, epochs=1, verbose=0)


@pytest.mark.parametrize("what,make,exc,word", [
    ("unknown activation", lambda: fm.Dense(3, activation="swishy"), ValueError, "activation"),
    ("unknown initializer", lambda: fm.Dense(3, kernel_initializer="ones-ish"), ValueError, "initializer"),
    ("units zero", lambda: fm.Dense(0), ValueError, "units"),
    ("units float", lambda: fm.Dense(2.5), ValueError, "units"),
    ("leaky slope negative", lambda: fm.activations.LeakyReLU(-0.1), ValueError, "slope"),
    ("elu alpha zero", lambda: fm.activations.ELU(0.0), ValueError, "alpha"),
    ("negative regularizer", lambda: fm.regularizers.L2(-1.0), ValueError, "l2"),
    ("nan regularizer", lambda: fm.regularizers.L1(float("nan")), ValueError, "l1"),
    ("bad regularizer type", lambda: fm.Dense(3, kernel_regularizer="l2"), TypeError, "regularizer"),
    ("lr negative", lambda: fm.optimizers.Adam(lr=-1.0), ValueError, "lr"),
    ("beta out of range", lambda: fm.optimizers.Adam(betas=(1.0, 0.9)), ValueError, "beta1"),
    ("nesterov without momentum", lambda: fm.optimizers.SGD(nesterov=True), ValueError, "Nesterov"),
    ("bad seed", lambda: fm.Sequential([fm.Dense(2, input_dim=2)], seed=-5), ValueError, "seed"),
    ("not a layer", lambda: fm.Sequential(["dense"]), TypeError, "Dense"),
    ("mismatched input_dim", lambda: fm.Sequential([fm.Dense(3, input_dim=2), fm.Dense(2, input_dim=4)]),
     ValueError, "input_dim"),
])
def test_bad_construction(what, make, exc, word):
    with pytest.raises(exc, match=word):
        make()


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(loss="nonsense"), ValueError, "loss"),
    (dict(loss="mse", optimizer="adamx"), ValueError, "optimizer"),
    (dict(loss="mse", optimizer=3), TypeError, "optimizer"),
    (dict(loss="mse", metrics=["f1"]), ValueError, "metric"),
    (dict(loss="mse", metrics=["accuracy"]), ValueError, "accuracy"),
    (dict(loss="sparse_categorical_crossentropy", device="tpu"), ValueError, "device"),
    (dict(loss="mse", precision="fp8"), ValueError, "precision"),
    (dict(loss="mse", precision="tf32", device="cpu"), ValueError, "CUDA"),
    (dict(loss="mse", dtype="float16"), ValueError, "dtype"),
    (dict(loss=None), ValueError, "loss"),
])
def test_bad_compile(kwargs, exc, word):
    m = fm.Sequential([fm.Dense(3, activation="linear", input_dim=2)], seed=0)
    with pytest.raises(exc, match=word):
        m.compile(**kwargs)


def test_loss_and_output_activation_must_fit():
    with pytest.raises(ValueError, match="softmax"):
        fm.Sequential([fm.Dense(3, activation="relu", input_dim=2), fm.Dense(3, activation="softmax")]) \
            .compile(loss="binary_crossentropy")
    with pytest.raises(ValueError, match="softmax"):
        fm.Sequential([fm.Dense(3, activation="softmax", input_dim=2), fm.Dense(3, activation="softmax")]) \
            .compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="from_logits"):
        fm.Sequential([fm.Dense(3, activation="tanh", input_dim=2)]).compile(loss="categorical_crossentropy")
    m = fm.Sequential([fm.Dense(3, input_dim=2)], seed=0)
    m.compile(loss=fm.losses.CategoricalCrossentropy(from_logits=True), device="cpu")  # linear + logits is fine


def test_calls_before_compile_raise(model):
    m = fm.Sequential([fm.Dense(3, activation="softmax", input_dim=4)], seed=0)
    for call in (lambda: m.fit(X, Y), lambda: m.evaluate(X, Y), lambda: m.predict(X),
                 lambda: m.train_on_batch(X, Y), lambda: m.compute_gradients(X, Y), lambda: m.set_weights([]),
                 lambda: fm.gradcheck(m, X, Y)):
        with pytest.raises(RuntimeError, match="compile"):
            call()


def test_bad_evaluate_predict_and_batch_calls(model):
    before = model.get_weights()
    with pytest.raises(ValueError, match="features"):
        model.predict(np.ones((3, 7)))
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(X, batch_size=0)
    with pytest.raises(ValueError, match="labels"):
        model.evaluate(X, np.full(10, 5))
    with pytest.raises(ValueError, match="labels"):
        model.train_on_batch(X, np.full(10, 5))
    with pytest.raises(ValueError, match="NaN"):
        model.compute_gradients(np.full((10, 4), np.nan), Y)
    assert unchanged(model, before)


def test_bad_set_weights_leave_model_unchanged(model):
    before = model.get_weights()
    good = model.get_weights()
    for weights, exc, word in [
        (good[:3], ValueError, "expects 4"),
        ([good[0].T, *good[1:]], ValueError, "shape"),
        ([good[0], good[1][:-1], *good[2:]], ValueError, "shape"),
        ([np.full_like(good[0], np.nan), *good[1:]], ValueError, "NaN"),
        ([np.array([["x"] * 8] * 4), *good[1:]], TypeError, "numeric"),
    ]:
        with pytest.raises(exc, match=word):
            model.set_weights(weights)
        assert unchanged(model, before)


def test_divergence_stops_with_last_good_weights():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(64, 3)) * 100, rng.normal(size=(64, 1)) * 100
    m = fm.Sequential([fm.Dense(16, activation="relu", input_dim=3), fm.Dense(1)], seed=0)
    m.compile(optimizer=fm.optimizers.SGD(lr=10.0), loss="mse", device="cpu")
    with pytest.raises(fm.NonFiniteLossError, match="NaN or Inf"):
        m.fit(x, y, epochs=20, batch_size=8, verbose=0)
    weights = m.get_weights()
    assert all(np.isfinite(w).all() for w in weights)
    assert m.history.history.get("loss", []) == [] or all(np.isfinite(m.history.history["loss"]))
    # The model stays usable: restore sane weights, lower the rate and keep training.
    m.set_weights([np.zeros_like(w) + 0.01 for w in weights])
    m.set_learning_rate(1e-4)
    m.fit(x / 100, y / 100, epochs=1, batch_size=8, verbose=0)
    # A single step whose loss overflows is refused and changes nothing.
    before = m.get_weights()
    with pytest.raises(fm.NonFiniteLossError, match="not updated"):
        m.train_on_batch(x * 1e30, y)
    assert unchanged(m, before)
