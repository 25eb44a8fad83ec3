"""fastmlp learns: digits, XOR, two spirals, a sine regression, a binary problem with BCE,
a hinge-loss classifier; seeds make training bit-for-bit reproducible; fit continues training."""
import numpy as np
import pytest

import fastmlp as fm

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_digits, make_blobs, make_moons  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402


def accuracy(model, x, y):
    p = model.predict(x)
    pred = (p[:, 0] > 0.5).astype(int) if p.shape[1] == 1 else p.argmax(axis=1)
    return float(np.mean(pred == y))


def test_digits_above_95_percent_test_accuracy():
    d = load_digits()
    x, y = d.data / 16.0, d.target  # pixels are 0..16 -> [0, 1]
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    m = fm.Sequential([fm.Dense(64, activation="relu", input_dim=64, kernel_regularizer=fm.regularizers.L2(1e-5)),
                       fm.Dense(10, activation="softmax")], seed=0)
    m.compile(optimizer=fm.optimizers.Adam(lr=3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"],
              device="cpu")
    h = m.fit(xtr, ytr, epochs=30, batch_size=32, validation_data=(xte, yte), shuffle=True, verbose=0)
    assert set(h.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 30 for v in h.history.values())
    assert h.history["loss"][-1] < h.history["loss"][0]
    result = m.evaluate(xte, yte)
    assert set(result) == {"loss", "accuracy"}
    assert result["accuracy"] > 0.95
    assert result["accuracy"] == pytest.approx(accuracy(m, xte, yte))
    assert result["accuracy"] == pytest.approx(h.history["val_accuracy"][-1])
    probs = m.predict(xte)
    assert probs.shape == (len(xte), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("loss,out,k", [("binary_crossentropy", "sigmoid", 1),
                                        ("sparse_categorical_crossentropy", "softmax", 2)])
def test_xor_one_hidden_layer(loss, out, k):
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    y = np.array([0, 1, 1, 0])
    m = fm.Sequential([fm.Dense(8, activation="tanh", input_dim=2), fm.Dense(k, activation=out)], seed=0)
    m.compile(optimizer=fm.optimizers.Adam(lr=0.05), loss=loss, metrics=["accuracy"], device="cpu")
    yy = y.reshape(-1, 1).astype(float) if k == 1 else y
    h = m.fit(x, yy, epochs=300, batch_size=4, verbose=0)
    assert accuracy(m, x, y) == 1.0
    assert h.history["accuracy"][-1] == 1.0
    assert h.history["loss"][-1] < 0.1


def two_spirals(n_per_arm=150):
    t = np.linspace(0.25, 3 * np.pi, n_per_arm)
    arm = np.c_[t * np.cos(t), t * np.sin(t)] / (3 * np.pi)
    return np.r_[arm, -arm], np.r_[np.zeros(n_per_arm, int), np.ones(n_per_arm, int)]


def test_two_spirals_one_hidden_layer():
    x, y = two_spirals()
    m = fm.Sequential([fm.Dense(64, activation="relu", input_dim=2), fm.Dense(2, activation="softmax")], seed=0)
    m.compile(optimizer=fm.optimizers.Adam(lr=0.02), loss="sparse_categorical_crossentropy", metrics=["accuracy"],
              device="cpu")
    m.fit(x, y, epochs=800, batch_size=32, verbose=0)
    assert accuracy(m, x, y) >= 0.95


def test_sine_regression_mse():
    rng = np.random.default_rng(0)
    x = rng.uniform(-np.pi, np.pi, size=(400, 1))
    y = np.sin(x)
    m = fm.Sequential([fm.Dense(32, activation="tanh", input_dim=1), fm.Dense(1)], seed=0)
    m.compile(optimizer=fm.optimizers.Adam(lr=0.01), loss="mse", metrics=["mae"], device="cpu")
    h = m.fit(x, y, epochs=200, batch_size=32, verbose=0)
    xt = np.linspace(-np.pi, np.pi, 200).reshape(-1, 1)
    pred = m.predict(xt)
    r2 = 1 - np.sum((pred - np.sin(xt)) ** 2) / np.sum((np.sin(xt) - np.sin(xt).mean()) ** 2)
    assert r2 > 0.95, r2
    assert h.history["mae"][-1] < 0.2
    res = m.evaluate(xt, np.sin(xt))
    assert res["loss"] == pytest.approx(np.mean((pred - np.sin(xt)) ** 2), rel=1e-4)


def test_binary_crossentropy_sigmoid_moons():
    x, y = make_moons(n_samples=400, noise=0.1, random_state=0)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0)
    m = fm.Sequential([fm.Dense(16, activation="tanh", input_dim=2), fm.Dense(1, activation="sigmoid")], seed=0)
    m.compile(optimizer=fm.optimizers.Adam(lr=0.02), loss="binary_crossentropy", metrics=["accuracy"],
              device="cpu")
    h = m.fit(xtr, ytr.astype(float), epochs=150, batch_size=32, verbose=0)
    p = m.predict(xte)
    assert p.shape == (len(xte), 1) and (p >= 0).all() and (p <= 1).all()
    assert accuracy(m, xte, yte) > 0.95
    assert m.evaluate(xte, yte.astype(float))["accuracy"] == pytest.approx(accuracy(m, xte, yte))
    assert h.history["loss"][-1] < h.history["loss"][0]


def test_bce_from_logits_learns_like_sigmoid():
    x, y = make_moons(n_samples=300, noise=0.1, random_state=1)
    m = fm.Sequential([fm.Dense(16, activation="tanh", input_dim=2), fm.Dense(1)], seed=0)
    m.compile(optimizer=fm.optimizers.Adam(lr=0.02), loss=fm.losses.BinaryCrossentropy(from_logits=True),
              metrics=["accuracy"], device="cpu")
    h = m.fit(x, y.astype(float), epochs=150, batch_size=32, verbose=0)
    assert h.history["accuracy"][-1] > 0.95
    assert np.mean((m.predict(x)[:, 0] > 0) == y) > 0.95  # logits: the threshold is 0


@pytest.mark.parametrize("out", ["linear", "softmax"])
def test_multiclass_hinge_classifier(out):
    x, y = make_blobs(n_samples=300, centers=4, n_features=5, cluster_std=1.5, random_state=0)
    x = (x - x.mean(0)) / x.std(0)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0)
    m = fm.Sequential([fm.Dense(16, activation="relu", input_dim=5), fm.Dense(4, activation=out)], seed=0)
    m.compile(optimizer=fm.optimizers.SGD(lr=0.05, momentum=0.9), loss="multiclass_hinge", metrics=["accuracy"],
              device="cpu")
    h = m.fit(xtr, ytr, epochs=60, batch_size=16, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert accuracy(m, xte, yte) > 0.95


@pytest.mark.parametrize("opt", [fm.optimizers.SGD(lr=0.1, momentum=0.9, nesterov=True), fm.optimizers.Adagrad(0.1),
                                 fm.optimizers.RMSprop(1e-2), fm.optimizers.Adadelta(1.0),
                                 fm.optimizers.AdamW(1e-2), fm.optimizers.NAdam(1e-2), fm.optimizers.RAdam(1e-2),
                                 fm.optimizers.LAMB(1e-2)], ids=lambda o: type(o).__name__)
def test_every_optimizer_learns_digits_subset(opt):
    d = load_digits()
    x, y = d.data[:600] / 16.0, d.target[:600]
    m = fm.Sequential([fm.Dense(32, activation="relu", input_dim=64), fm.Dense(10, activation="softmax")], seed=1)
    m.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu")
    h = m.fit(x, y, epochs=15, batch_size=32, verbose=0)
    assert h.history["accuracy"][-1] > 0.9, h.history["accuracy"][-1]


# ---------------------------------------------------------------- reproducibility

def _train(seed, epochs=3, dtype="float32", shuffle=True, x=None, y=None):
    d = load_digits()
    x = d.data[:300] / 16.0 if x is None else x
    y = d.target[:300] if y is None else y
    m = fm.Sequential([fm.Dense(16, activation="relu", input_dim=64), fm.Dense(10, activation="softmax")], seed=seed)
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu",
              dtype=dtype)
    h = m.fit(x, y, epochs=epochs, batch_size=16, shuffle=shuffle, verbose=0)
    return m, h


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_seed_gives_bit_identical_weights(dtype):
    a, ha = _train(7, dtype=dtype)
    b, hb = _train(7, dtype=dtype)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert wa.dtype == np.dtype(dtype)
        assert np.array_equal(wa, wb)
    assert ha.history == hb.history


def test_different_seeds_differ():
    a, _ = _train(7)
    b, _ = _train(8)
    assert all(not np.array_equal(wa, wb) for wa, wb in zip(a.get_weights()[::2], b.get_weights()[::2]))
    # the initial weights differ too, and so does the shuffle order alone
    ia = fm.Sequential([fm.Dense(4, input_dim=3)], seed=1)
    ib = fm.Sequential([fm.Dense(4, input_dim=3)], seed=2)
    for m in (ia, ib):
        m.compile(loss="mse", device="cpu")
    assert not np.array_equal(ia.get_weights()[0], ib.get_weights()[0])


def test_shuffle_changes_the_result_and_order_matters():
    a, _ = _train(7, shuffle=True)
    b, _ = _train(7, shuffle=False)
    assert not np.array_equal(a.get_weights()[0], b.get_weights()[0])


def test_fit_called_again_continues_training():
    d = load_digits()
    x, y = d.data[:300] / 16.0, d.target[:300]
    one, h_one = _train(3, epochs=4, x=x, y=y)
    two, h_first = _train(3, epochs=2, x=x, y=y)
    h_second = two.fit(x, y, epochs=2, batch_size=16, verbose=0)
    # two calls of 2 epochs are exactly one call of 4: weights, optimizer state and shuffles continue
    for wa, wb in zip(one.get_weights(), two.get_weights()):
        assert np.array_equal(wa, wb)
    assert h_first.history["loss"] + h_second.history["loss"] == h_one.history["loss"]
    assert h_second.history["loss"][-1] < h_first.history["loss"][0]
    # epochs=0 does nothing
    before = two.get_weights()
    h = two.fit(x, y, epochs=0, verbose=0)
    assert h.history == {} or all(len(v) == 0 for v in h.history.values())
    assert all(np.array_equal(a, b) for a, b in zip(before, two.get_weights()))
