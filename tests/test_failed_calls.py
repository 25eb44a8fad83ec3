"""A call that fails leaves the model exactly as it was: weights, optimizer state, configuration
(issue 9, item 4)."""
import numpy as np
import pytest

import fastmlp as fm

rng = np.random.default_rng(0)
X = rng.normal(size=(120, 6)).astype(np.float32)
Y = rng.integers(0, 3, 120)


def trained():
    m = fm.Sequential([fm.Dense(8, "relu", input_dim=6), fm.Dense(3, "softmax")], seed=1)
    m.compile(fm.optimizers.Adam(lr=0.01), "sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu")
    m.fit(X, Y, epochs=2, batch_size=16, verbose=0)
    return m


def state_of(m):
    params, state, step = m._engine.get_snapshot()
    return params.copy(), state.copy(), int(step), m.device, type(m.optimizer), m.get_learning_rate()


def assert_same_state(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2:] == b[2:]


@pytest.mark.parametrize("device", ["cuda", "cuda:99999999999"])
def test_a_failed_compile_keeps_the_trained_model(device):
    if device == "cuda" and fm.cuda_is_available():
        pytest.skip("CUDA is available here: compiling for it succeeds")
    m = trained()
    before = state_of(m)
    prediction = m.predict(X)
    with pytest.raises((RuntimeError, ValueError)):
        m.compile("sgd", "sparse_categorical_crossentropy", device=device)
    assert_same_state(state_of(m), before)
    np.testing.assert_array_equal(m.predict(X), prediction)
    m.fit(X, Y, epochs=1, verbose=0)  # and it trains on, with its Adam state
    assert m._engine.step == before[2] + 4  # 120 rows in batches of 32


def test_a_compile_that_fails_validation_changes_nothing():
    m = trained()
    before = state_of(m)
    with pytest.raises(ValueError):
        m.compile("adam", "binary_crossentropy", device="cpu")  # softmax output: rejected
    with pytest.raises(ValueError):
        m.compile("adam", "sparse_categorical_crossentropy", device="cpu", precision="bf16")
    assert_same_state(state_of(m), before)


def test_a_recompile_keeps_weights_and_copies_them_across_dtypes():
    m = trained()
    weights = m.get_weights()
    m.compile("sgd", "sparse_categorical_crossentropy", device="cpu", dtype="float64")
    for a, b in zip(m.get_weights(), weights):
        assert a.dtype == np.float64
        np.testing.assert_array_equal(a, b.astype(np.float64))


def test_set_weights_with_wrong_shapes_leaves_an_unbuilt_model_unbuilt():
    m = fm.Sequential([fm.Dense(8, "relu"), fm.Dense(3, "softmax")], seed=0)
    m.compile("adam", "sparse_categorical_crossentropy", device="cpu")
    with pytest.raises(ValueError):
        m.set_weights([np.ones((5, 8))])
    assert not m.built and m.input_dim is None
    with pytest.raises(ValueError):
        m.set_weights([np.ones((5, 8)), np.ones(8), np.ones((8, 4)), np.ones(3)])
    assert not m.built and m.input_dim is None
    # The model still takes its width from the first data it sees.
    m.fit(X, Y, epochs=1, verbose=0)
    assert m.input_dim == 6


def test_set_weights_builds_an_unbuilt_model_when_everything_fits():
    m = fm.Sequential([fm.Dense(8, "relu"), fm.Dense(3, "softmax")], seed=0)
    m.compile("adam", "sparse_categorical_crossentropy", device="cpu")
    w = [np.full((5, 8), 0.5), np.zeros(8), np.full((8, 3), -0.25), np.ones(3)]
    m.set_weights(w)
    assert m.input_dim == 5
    for a, b in zip(m.get_weights(), w):
        np.testing.assert_array_equal(a, b.astype(np.float32))


def test_one_optimizer_instance_for_two_models_keeps_them_independent():
    opt = fm.optimizers.SGD(lr=0.1, momentum=0.9)
    a = fm.Sequential([fm.Dense(3, "softmax", input_dim=6)], seed=0)
    b = fm.Sequential([fm.Dense(3, "softmax", input_dim=6)], seed=0)
    a.compile(opt, "sparse_categorical_crossentropy", device="cpu")
    b.compile(opt, "sparse_categorical_crossentropy", device="cpu")
    a.set_learning_rate(0.5)
    assert b.get_learning_rate() == pytest.approx(0.1)
    assert opt.lr == pytest.approx(0.1)
    a.fit(X, Y, epochs=1, verbose=0)
    b.fit(X, Y, epochs=1, verbose=0)
    assert not np.array_equal(a.get_weights()[0], b.get_weights()[0])  # different rates, different steps


def test_a_failed_set_weights_keeps_the_weights():
    m = trained()
    before = state_of(m)
    bad = m.get_weights()
    bad[-1] = np.array([np.nan, 0, 0], dtype=np.float32)
    with pytest.raises(ValueError, match="NaN"):
        m.set_weights(bad)
    with pytest.raises(ValueError, match="expects 4 arrays"):
        m.set_weights(bad[:2])
    assert_same_state(state_of(m), before)


def test_a_negative_moving_variance_is_refused():
    m = fm.Sequential([fm.Dense(4, input_dim=6), fm.BatchNormalization(), fm.Dense(3, "softmax")], seed=0)
    m.compile("sgd", "sparse_categorical_crossentropy", device="cpu")
    weights = m.get_weights()
    before = [w.copy() for w in weights]
    weights[5] = -np.ones(4, np.float32)  # [W, b, gamma, beta, moving_mean, moving_variance, ...]
    with pytest.raises(ValueError, match="moving_variance"):
        m.set_weights(weights)
    for a, b in zip(m.get_weights(), before):
        np.testing.assert_array_equal(a, b)
