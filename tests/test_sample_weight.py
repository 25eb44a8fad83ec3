"""sample_weight and class_weight (Keras semantics): a row's loss and gradient are multiplied by
its weight, a batch's mean still divides by its row count. Checked against the float64 NumPy
reference row by row, and against the same data with rows repeated."""
import numpy as np
import pytest

import fastmlp as fm
import reference as ref
from test_reference import build, random_weights, targets

LOSSES = [("sparse_categorical_crossentropy", "softmax"), ("binary_crossentropy", "sigmoid"), ("mse", "linear"),
          ("multiclass_hinge", "tanh"), ("poisson", "exponential"), ("categorical_crossentropy", "softmax")]


def case(loss, out, n=10, seed=0):
    rng = np.random.default_rng(seed)
    spec = [(6, "tanh", 0.0, 0.0, 1e-2), (3, out, 0.0, 0.0, 0.0)]
    w = random_weights(spec, 4, rng, scale=0.4)
    x = rng.normal(size=(n, 4))
    y = targets(loss, n, 3, rng)
    return spec, w, x, y, rng.uniform(0.0, 3.0, n)


def weighted_reference(spec, w, x, y, loss, sw):
    """(loss, gradient) of mean_i sw_i * loss_i + penalty from the reference's one-row batches."""
    n = len(x)
    total, grad = ref.penalty(spec, w), None
    for i in range(n):
        li, gi = ref.gradients([(u, a, p, 0.0, 0.0) for u, a, p, _, _ in spec], w, x[i:i + 1],
                               np.asarray(y, dtype=np.float64)[i:i + 1], loss)
        total += sw[i] * li / n
        gi = [sw[i] * g / n for g in gi]
        grad = gi if grad is None else [a + b for a, b in zip(grad, gi)]
    pen = ref.gradients(spec, w, x[:0 + 1], np.asarray(y, dtype=np.float64)[:1], loss)[1]
    nopen = ref.gradients([(u, a, p, 0.0, 0.0) for u, a, p, _, _ in spec], w, x[:1],
                          np.asarray(y, dtype=np.float64)[:1], loss)[1]
    grad = [g + (a - b) for g, a, b in zip(grad, pen, nopen)]  # the penalty's gradient
    return total, grad


@pytest.mark.parametrize("loss,out", LOSSES, ids=lambda v: str(v))
def test_weighted_loss_and_step_match_the_reference(loss, out):
    spec, w, x, y, sw = case(loss, out)
    m = build(spec, 4, loss)
    m.set_weights(w)
    want_loss, want_grad = weighted_reference(spec, w, x, y, loss, sw)
    assert m.evaluate(x, y, sample_weight=sw)["loss"] == pytest.approx(want_loss, rel=1e-12)
    assert m.evaluate(x, y)["loss"] != pytest.approx(want_loss, rel=1e-6)  # the weights matter
    # One full-batch SGD step is w - lr * (weighted gradient).
    m.compile(fm.optimizers.SGD(0.1), loss, device="cpu", dtype="float64")
    m.fit(x, y, sample_weight=sw, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    for got, w0, g in zip(m.get_weights(), w, want_grad):
        np.testing.assert_allclose(got, w0 - 0.1 * g, rtol=1e-11, atol=1e-13)


def test_integer_weights_equal_repeated_rows():
    spec, w, x, y, _ = case("sparse_categorical_crossentropy", "softmax", n=16, seed=1)
    spec = [(u, a, p, 0.0, 0.0) for u, a, p, _, _ in spec]  # no penalty: it would not scale with the rows
    counts = np.random.default_rng(1).integers(0, 4, len(x))
    a = build(spec, 4, "sparse_categorical_crossentropy")
    a.set_weights(w)
    a.compile(fm.optimizers.SGD(0.2), "sparse_categorical_crossentropy", device="cpu", dtype="float64")
    a.fit(x, y, sample_weight=counts, batch_size=len(x), epochs=3, shuffle=False, verbose=0)
    xr, yr = np.repeat(x, counts, 0), np.repeat(y, counts, 0)
    b = build(spec, 4, "sparse_categorical_crossentropy")
    b.set_weights(w)
    # the repeated set has counts.sum() rows: the same gradient needs lr * rows / len(x)
    b.compile(fm.optimizers.SGD(0.2 * len(xr) / len(x)), "sparse_categorical_crossentropy", device="cpu",
              dtype="float64")
    b.fit(xr, yr, batch_size=len(xr), epochs=3, shuffle=False, verbose=0)
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12)


def test_class_weight_is_a_weight_per_class_and_multiplies_sample_weight():
    spec, w, x, y, sw = case("sparse_categorical_crossentropy", "softmax", n=12, seed=2)
    cw = {0: 2.0, 2: 0.5}  # class 1 is not listed: weight 1
    per_row = np.array([cw.get(int(c), 1.0) for c in y])
    runs = []
    for kwargs in ({"class_weight": cw, "sample_weight": sw}, {"sample_weight": sw * per_row}):
        m = build(spec, 4, "sparse_categorical_crossentropy")
        m.set_weights(w)
        m.fit(x, y, batch_size=4, epochs=2, shuffle=True, verbose=0, **kwargs)
        runs.append(m.get_weights())
    for u, v in zip(*runs):
        np.testing.assert_array_equal(u, v)


def test_weights_survive_streaming_validation_split_and_validation_data():
    spec, w, x, y, sw = case("mse", "linear", n=40, seed=3)
    results = []
    for budget in (None, 0):  # resident, then streamed through the chunk buffers
        m = build(spec, 4, "mse")
        m.set_weights(w)
        m.data_budget = budget
        h = m.fit(x, y, sample_weight=sw, batch_size=8, epochs=2, verbose=0, validation_split=0.25)
        results.append((m.get_weights(), h.history["val_loss"]))
    for u, v in zip(results[0][0], results[1][0]):
        np.testing.assert_array_equal(u, v)
    assert results[0][1] == results[1][1]
    # validation_split keeps each row's weight with its row: the same as passing the split by hand
    m = build(spec, 4, "mse")
    m.set_weights(w)
    h = m.fit(x[:30], y[:30], sample_weight=sw[:30], batch_size=8, epochs=2, verbose=0,
              validation_data=(x[30:], y[30:], sw[30:]))
    for u, v in zip(results[0][0], m.get_weights()):
        np.testing.assert_array_equal(u, v)
    assert h.history["val_loss"] == results[0][1]


@pytest.mark.parametrize("bad,word", [(-np.ones(10), "negative"), (np.full(10, np.nan), "NaN"),
                                      (np.ones(9), "one weight per sample"), (np.ones((10, 2)), "one weight"),
                                      (["a"] * 10, "real numbers")])
def test_bad_weights_raise_and_leave_the_model_alone(bad, word):
    spec, w, x, y, _ = case("mse", "linear")
    m = build(spec, 4, "mse")
    m.set_weights(w)
    with pytest.raises((ValueError, TypeError), match=word):
        m.fit(x, y, sample_weight=bad, verbose=0)
    with pytest.raises((ValueError, TypeError), match=word):
        m.evaluate(x, y, sample_weight=bad)
    for a, b in zip(m.get_weights(), w):
        np.testing.assert_array_equal(a, b)


def test_bad_class_weight_and_weights_without_targets_raise():
    spec, w, x, y, sw = case("sparse_categorical_crossentropy", "softmax")
    m = build(spec, 4, "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="class indices"):
        m.fit(x, y, class_weight={7: 1.0}, verbose=0)
    with pytest.raises(ValueError, match=">= 0"):
        m.fit(x, y, class_weight={0: -1.0}, verbose=0)
    with pytest.raises(TypeError, match="dict"):
        m.fit(x, y, class_weight=[1.0, 2.0], verbose=0)
    resident = m.upload(x, y, sample_weight=sw)
    with pytest.raises(ValueError, match="ResidentDataset"):
        m.fit(resident, sample_weight=sw, verbose=0)
    # the weights uploaded with the data are used: the same loss as passing them to evaluate
    assert m.evaluate(resident)["loss"] == m.evaluate(x, y, sample_weight=sw)["loss"]
    with pytest.raises(ValueError, match="needs targets"):
        m.upload(x, sample_weight=sw)


def test_native_layer_refuses_bad_weights_too():
    # The engine checks what reaches it (finite, >= 0) whatever the Python layer let through.
    spec, w, x, y, _ = case("mse", "linear")
    m = build(spec, 4, "mse")
    yw = np.column_stack([np.asarray(y, dtype=np.float64), -np.ones(len(x))])
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        m._engine.upload(np.ascontiguousarray(x), np.ascontiguousarray(yw), True)
    with pytest.raises(ValueError, match="rows of"):
        m._engine.upload(np.ascontiguousarray(x), np.ascontiguousarray(np.asarray(y, dtype=np.float64)), True)
