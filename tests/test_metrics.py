"""Several metrics at once, accumulated natively: each checked against Keras's definition written
out in NumPy here (AUC with Keras's 200 thresholds and trapezoid rule), in fit's history,
evaluate, the CSV log, data sources and a save/load round trip."""
import csv

import numpy as np
import pytest

import fastmlp as fm

RNG = np.random.default_rng(0)


def keras_auc(y_true, scores, num_thresholds=200):
    # keras.metrics.AUC(curve="ROC", summation_method="interpolation"): thresholds
    # [-eps, 1/(n-1), ..., (n-2)/(n-1), 1+eps], counts of scores > threshold, trapezoid over FPR.
    eps = 1e-7
    thresholds = np.array([-eps] + [(i + 1) / (num_thresholds - 1) for i in range(num_thresholds - 2)] + [1 + eps])
    pos = y_true > 0.5
    tp = np.array([np.sum((scores > t) & pos) for t in thresholds], dtype=float)
    fp = np.array([np.sum((scores > t) & ~pos) for t in thresholds], dtype=float)
    tpr, fpr = tp / pos.sum(), fp / (~pos).sum()
    return np.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2)


def softmax_model(k=4, metrics=None, dtype="float64"):
    m = fm.Sequential([fm.Dense(16, "tanh", input_dim=6), fm.Dense(k, "softmax")], seed=0)
    m.compile("adam", "sparse_categorical_crossentropy", metrics=metrics, device="cpu", dtype=dtype)
    return m


ALL = ["accuracy", "top_k_categorical_accuracy", fm.metrics.TopKCategoricalAccuracy(2), "mae", "mse", "precision",
       "recall", "auc"]


def test_every_metric_matches_its_keras_definition():
    x, y = RNG.normal(size=(400, 6)), RNG.integers(0, 4, 400)
    m = softmax_model(metrics=ALL)
    m.fit(x, y, epochs=3, batch_size=32, verbose=0)
    got = m.evaluate(x, y)
    p, onehot = m.predict(x), np.eye(4)[y]
    predicted, actual = p.ravel() > 0.5, onehot.ravel() > 0.5
    want = {"accuracy": np.mean(p.argmax(1) == y),
            "top_k_categorical_accuracy": 1.0,  # k=5 >= 4 classes: always
            "top_k_categorical_accuracy_1": np.mean([(p[i] > p[i, y[i]]).sum() < 2 for i in range(len(y))]),
            "mae": np.abs(p - onehot).mean(), "mse": ((p - onehot) ** 2).mean(),
            "precision": np.sum(predicted & actual) / max(1, predicted.sum()),
            "recall": np.sum(predicted & actual) / actual.sum(),
            "auc": keras_auc(onehot.ravel(), p.ravel())}
    assert set(got) == {"loss", *want}
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_binary_and_from_logits_outputs_score_probabilities():
    x = RNG.normal(size=(300, 6))
    y = (x[:, 0] + 0.3 * RNG.normal(size=300) > 0).astype(float)[:, None]
    results = []
    for out, loss in (("sigmoid", "binary_crossentropy"), ("linear", fm.losses.BinaryCrossentropy(from_logits=True))):
        m = fm.Sequential([fm.Dense(8, "relu", input_dim=6), fm.Dense(1, out)], seed=1)
        m.compile("adam", loss, metrics=["accuracy", "auc", "precision", "recall"], device="cpu", dtype="float64")
        m.fit(x, y, epochs=2, verbose=0)
        results.append(m.evaluate(x, y))
        logits_or_p = m.predict(x).ravel()
        p = logits_or_p if out == "sigmoid" else 1 / (1 + np.exp(-logits_or_p))
        assert results[-1]["accuracy"] == pytest.approx(np.mean((p > 0.5) == (y.ravel() > 0.5)), abs=1e-12)
        assert results[-1]["auc"] == pytest.approx(keras_auc(y.ravel(), p), abs=1e-12)
    assert results[0] == pytest.approx(results[1], rel=1e-9)  # the same network either way


def test_regression_metrics_and_refusals():
    x, y = RNG.normal(size=(100, 6)), RNG.normal(size=(100, 2))
    m = fm.Sequential([fm.Dense(2, "linear", input_dim=6)], seed=0)
    m.compile("sgd", "huber", metrics=["mae", "mse"], device="cpu", dtype="float64")
    r = m.evaluate(x, y)
    p = m.predict(x)
    assert r["mae"] == pytest.approx(np.abs(p - y).mean(), rel=1e-12)
    assert r["mse"] == pytest.approx(((p - y) ** 2).mean(), rel=1e-12)
    for bad in ("auc", "precision", fm.metrics.TopKCategoricalAccuracy(1)):
        with pytest.raises(ValueError, match="classification loss"):
            m.compile("sgd", "mse", metrics=[bad, "mae"], device="cpu")
    with pytest.raises(ValueError, match="unknown metric"):
        m.compile("sgd", "mse", metrics=["mae", "f1"], device="cpu")
    with pytest.raises(ValueError, match="k must be"):
        fm.metrics.TopKCategoricalAccuracy(0)


def test_history_csv_running_logs_sources_and_save(tmp_path):
    x, y = RNG.normal(size=(120, 6)), RNG.integers(0, 4, 120)
    m = softmax_model(metrics=["accuracy", "auc"])
    log = tmp_path / "log.csv"
    seen = []
    cb = fm.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(dict(logs)), batch_interval=2)
    h = m.fit(x, y, epochs=2, batch_size=10, validation_data=(x[:40], y[:40]), verbose=0,
              callbacks=[fm.callbacks.CSVLogger(str(log)), cb])
    assert {"accuracy", "auc", "val_accuracy", "val_auc"} <= set(h.history)
    with open(log) as f:
        assert {"auc", "val_auc"} <= set(next(csv.DictReader(f)))
    assert seen and all("auc" in logs for logs in seen)  # running logs of the epoch so far
    # data sources add the sums over their chunks: the same values as the whole array
    chunks = ((x[i:i + 30], y[i:i + 30]) for i in range(0, 120, 30))
    assert m.evaluate(chunks) == pytest.approx(m.evaluate(x, y), rel=1e-12)
    m.save(tmp_path / "m.fm")
    back = fm.load_model(tmp_path / "m.fm")
    assert back.evaluate(x, y) == pytest.approx(m.evaluate(x, y), rel=1e-12)


def test_single_fused_metric_path_is_unchanged():
    # One of accuracy / binary_accuracy / mae keeps the engine's fused metric: the same logs as before.
    x, y = RNG.normal(size=(50, 6)), RNG.integers(0, 4, 50)
    a, b = softmax_model(metrics=["accuracy"]), softmax_model(metrics=[fm.metrics.Accuracy()])
    assert a._compile_args["further_metrics"] == [] and b._compile_args["further_metrics"]
    assert a.evaluate(x, y) == b.evaluate(x, y)


def test_train_on_batch_and_float32_carry_the_metrics():
    x, y = RNG.normal(size=(64, 6)), RNG.integers(0, 4, 64)
    m = softmax_model(metrics=["accuracy", "auc"], dtype="float32")
    m.train_on_batch(x, y)
    r = m.evaluate(x, y)
    p = m.predict(x)
    assert r["auc"] == pytest.approx(keras_auc(np.eye(4)[y].ravel(), p.ravel().astype(np.float64)), abs=2e-3)


def test_streamed_data_and_full_batch_methods_give_the_same_metrics():
    # Streamed chunks keep the class-id layout the metrics read (a lost flag once read past the
    # targets); full-batch optimizers report the metrics of the weights each step starts from.
    x, y = RNG.normal(size=(200, 6)), RNG.integers(0, 4, 200)
    hist = []
    for budget in (None, 2000):
        m = softmax_model(metrics=["accuracy", "precision", "auc"])
        m.data_budget = budget
        hist.append(m.fit(x, y, epochs=2, batch_size=16, verbose=0).history)
        if budget:
            assert m.upload(x, y)._native.streamed
    assert hist[0] == hist[1]
    m = softmax_model(metrics=["accuracy", "auc"])
    m.compile(fm.optimizers.LBFGS(max_iter=3), "sparse_categorical_crossentropy", metrics=["accuracy", "auc"],
              device="cpu", dtype="float64")
    start = m.evaluate(x, y)
    h = m.fit(x, y, epochs=1, verbose=0).history
    assert h["accuracy"] == [start["accuracy"]] and h["auc"] == [start["auc"]]


@pytest.mark.parametrize("dtype,far", [("float32", (-150.0, -200.0)), ("float64", (-800.0, -900.0))])
def test_top_k_and_accuracy_rank_by_the_logits_where_probabilities_underflow(dtype, far):
    """Softmax probabilities of logits far below the maximum are all 0 in floating point, but the
    classes still rank: with logits (0, far[0], far[1]) the last class has two classes above it,
    so it is not in the top 2. Ranking the rounded probabilities would count only one above it."""
    m = fm.Sequential([fm.Dense(3, "softmax", input_dim=1)], seed=0)
    m.compile("sgd", "sparse_categorical_crossentropy", device="cpu", dtype=dtype,
              metrics=["accuracy", fm.metrics.TopKCategoricalAccuracy(2, name="top2"),
                       fm.metrics.TopKCategoricalAccuracy(3, name="top3")])
    m.set_weights([np.array([[0.0, *far]]), np.zeros(3)])
    x = np.ones((3, 1))
    assert (m.predict(x)[:, 1:] == 0).all()  # the probabilities did underflow
    got = [m.evaluate(x[:1], np.array([c]), verbose=0) for c in range(3)]
    assert [g["top2"] for g in got] == [1.0, 1.0, 0.0]
    assert [g["top3"] for g in got] == [1.0, 1.0, 1.0]
    assert [g["accuracy"] for g in got] == [1.0, 0.0, 0.0]
