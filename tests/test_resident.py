"""ResidentDataset (model.upload): data copied once into backend memory and used by fit, evaluate
and predict of any compatible model, with results identical to passing the arrays; incompatible
uses get a clear error naming the mismatch and leave the model untouched."""
import gc

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import _core

RNG = np.random.default_rng(7)
X = RNG.normal(size=(120, 5)).astype(np.float32)
Y = (X[:, 0] + X[:, 2] > 0).astype(np.int64)
XV, YV = X[:30], Y[:30]


def make(hidden=8, n_out=2, loss="sparse_categorical_crossentropy", out="softmax", dtype="float32", input_dim=5):
    m = fm.Sequential([fm.Dense(hidden, "relu", input_dim=input_dim), fm.Dense(n_out, out)], seed=1)
    metrics = ["mae"] if loss == "mse" else ["accuracy"]
    m.compile(fm.optimizers.Adam(lr=1e-2), loss, metrics=metrics, device="cpu", dtype=dtype)
    return m


def same_weights(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights()))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_evaluate_predict_on_resident_data_equal_the_array_calls(dtype):
    a, b = make(dtype=dtype), make(dtype=dtype)
    ha = a.fit(X, Y, validation_data=(XV, YV), epochs=3, batch_size=16, verbose=0)
    train, val = b.upload(X, Y), b.upload(XV, YV)
    hb = b.fit(train, validation_data=val, epochs=3, batch_size=16, verbose=0)
    assert hb.history == ha.history and same_weights(a, b)
    assert b.evaluate(val) == a.evaluate(XV, YV)
    np.testing.assert_array_equal(b.predict(b.upload(XV)), a.predict(XV))
    np.testing.assert_array_equal(b.predict(val), a.predict(XV))  # targets are ignored by predict
    assert b.train_on_batch(val) == a.train_on_batch(XV, YV)
    for ga, gb in zip(a.compute_gradients(XV, YV), b.compute_gradients(val)):
        np.testing.assert_array_equal(ga, gb)


def test_one_upload_serves_other_models_and_outlives_its_model():
    owner = make()
    train = owner.upload(X, Y)
    assert (len(train), train.rows, train.features, train.device, train.dtype) == (120, 120, 5, "cpu", np.float32)
    assert train.has_targets and train.class_ids and train.target_columns == 1
    assert repr(train) == "ResidentDataset(120 rows x 5 features, class ids, float32, on cpu)"
    del owner
    gc.collect()
    wider, reference = make(hidden=32), make(hidden=32)
    wider.fit(train, epochs=2, batch_size=10, verbose=0)
    reference.fit(X, Y, epochs=2, batch_size=10, verbose=0)
    assert same_weights(wider, reference)


def test_a_model_without_input_dim_is_built_from_resident_data():
    src = make()
    train = src.upload(X, Y)
    m = fm.Sequential([fm.Dense(4, "relu"), fm.Dense(2, "softmax")], seed=0)
    m.compile("adam", "sparse_categorical_crossentropy", device="cpu")
    m.fit(train, epochs=1, verbose=0)
    assert m.input_dim == 5


def test_regression_targets_round_trip():
    yr = np.stack([X[:, 0], X[:, 1] * 2], axis=1)
    a, b = make(n_out=2, loss="mse", out="linear"), make(n_out=2, loss="mse", out="linear")
    data = b.upload(X, yr)
    assert not data.class_ids and data.target_columns == 2
    assert b.fit(data, epochs=2, verbose=0).history == a.fit(X, yr, epochs=2, verbose=0).history


@pytest.mark.parametrize("model_kw, exc, word", [
    (dict(input_dim=4), ValueError, "5 features per row but the model's input_dim is 4"),
    (dict(loss="mse", out="linear", n_out=1), ValueError, "class id per row"),
    (dict(loss="categorical_crossentropy"), ValueError, "class id per row"),
    (dict(dtype="float64"), TypeError, "float32 data but the model computes in float64"),
])
def test_incompatible_model_is_refused_with_the_reason(model_kw, exc, word):
    data = make().upload(X, Y)
    m = make(**model_kw)
    before = m.get_weights()
    with pytest.raises(exc, match=word):
        m.fit(data, epochs=1, verbose=0)
    with pytest.raises(exc, match=word):
        m.evaluate(data)
    assert all(np.array_equal(p, q) for p, q in zip(before, m.get_weights()))



def test_class_ids_beyond_the_outputs_are_refused():
    y4 = Y.copy()
    y4[3] = 3
    data = make(n_out=4).upload(X, y4)
    with pytest.raises(ValueError, match="class ids up to 3 but the model has 2 output units"):
        make().fit(data, epochs=1, verbose=0)
    make(n_out=5).fit(data, epochs=1, verbose=0)  # more outputs than classes is fine


def test_target_rows_are_refused_by_a_class_id_model():
    onehot = np.eye(2, dtype=np.float32)[Y]
    data = make(loss="categorical_crossentropy").upload(X, onehot)
    with pytest.raises(ValueError, match="holds target rows but this model's loss takes one class id"):
        make().fit(data, epochs=1, verbose=0)


@pytest.mark.parametrize("call, exc, word", [
    (lambda m, d, n: m.fit(d, Y, epochs=1, verbose=0), ValueError, "carries its own targets"),
    (lambda m, d, n: m.fit(n, epochs=1, verbose=0), ValueError, "no targets"),
    (lambda m, d, n: m.fit(d, validation_data=n, epochs=1, verbose=0), ValueError, "no targets"),
    (lambda m, d, n: m.fit(d, validation_split=0.2, epochs=1, verbose=0), ValueError, "validation_split"),
    (lambda m, d, n: m.evaluate(n), ValueError, "no targets"),
    (lambda m, d, n: m.train_on_batch(n), ValueError, "no targets"),
    (lambda m, d, n: m.upload(d), TypeError, "already a ResidentDataset"),
    (lambda m, d, n: m.fit(X), ValueError, "no targets"),
    (lambda m, d, n: m.evaluate(X), ValueError, "no targets"),
])
def test_misuse_gets_a_clear_error(call, exc, word):
    m = make()
    data, no_targets = m.upload(X, Y), m.upload(X)
    before = m.get_weights()
    with pytest.raises(exc, match=word):
        call(m, data, no_targets)
    assert all(np.array_equal(p, q) for p, q in zip(before, m.get_weights()))


def test_upload_needs_a_compiled_model_and_valid_arrays():
    m = fm.Sequential([fm.Dense(2, "softmax", input_dim=5)])
    with pytest.raises(RuntimeError, match="compile"):
        m.upload(X, Y)
    m = make()
    with pytest.raises(ValueError, match="NaN"):
        m.upload(np.full((3, 5), np.nan, np.float32), Y[:3])
    with pytest.raises(ValueError, match="labels"):
        m.upload(X, Y + 5)


@pytest.mark.parametrize("bad", [2.0, -1.0, 0.5, np.nan])
def test_native_upload_checks_class_ids_for_cpp_callers(bad):
    # The Python layer validates labels first; the engine checks again so a C++ embedder's bad
    # label can never index outside a row of logits.
    eng = make()._engine
    y = np.zeros((4, 1), np.float32)
    y[2, 0] = bad
    with pytest.raises(ValueError, match="class ids must be integers in \\[0, 2\\)"):
        eng.upload(np.zeros((4, 5), np.float32), y)
    assert isinstance(eng.upload(np.zeros((4, 5), np.float32), np.ones((4, 1), np.float32)), _core.Engine32Dataset)


def test_predict_ignores_the_targets_a_dataset_carries():
    classifier_data = make().upload(X, Y)  # class ids
    reg = make(n_out=2, loss="mse", out="linear")
    np.testing.assert_array_equal(reg.predict(classifier_data), reg.predict(X))
    with pytest.raises(ValueError, match="class id per row"):
        reg.evaluate(classifier_data)  # evaluate reads them, so the layout must match


def test_cpu_fit_reads_x_in_place_with_the_same_result_and_upload_still_copies():
    # fit on the CPU reads a C-contiguous array of the model's dtype in place (no second copy of
    # the data); the result is bit-identical to training on a copy. model.upload owns a copy:
    # changing the source afterwards changes nothing.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    y = rng.integers(0, 3, 200)

    def trained(data_x):
        m = fm.Sequential([fm.Dense(8, "relu", input_dim=6), fm.Dense(3, "softmax")], seed=4)
        m.compile("adam", "sparse_categorical_crossentropy", device="cpu")
        m.fit(data_x, y, epochs=2, batch_size=32, verbose=0)
        return m

    a, b = trained(x), trained(x.copy())
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(u, v)
    resident = a.upload(x, y)
    before = a.evaluate(resident)["loss"]
    x[:] = 0.0
    assert a.evaluate(resident)["loss"] == before
