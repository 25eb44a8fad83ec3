"""Datasets larger than the backend's memory budget are streamed from host memory in chunks of
whole batches. On the CPU the budget is unlimited, so these tests set a small one
(model.data_budget) to force the streaming path, which is the same engine code the GPU runs:
every result must equal the resident one bit for bit."""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import callbacks as C

RNG = np.random.default_rng(21)
X = RNG.normal(size=(100, 6)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.8).astype(np.int64)
ROW_BYTES = 4 * (6 + 1)  # float32 features + one class id


def make(budget=None, optimizer="adam", dtype="float32", seed=0):
    m = fm.Sequential([fm.Dense(16, "tanh", input_dim=6), fm.Dense(3, "softmax")], seed=seed)
    m.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu", dtype=dtype)
    m.data_budget = budget
    return m


def same_weights(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights()))


@pytest.mark.parametrize("batch, budget_rows", [(7, 30), (7, 3), (32, 64), (100, 10), (1, 5)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_streamed_fit_equals_resident_fit(batch, budget_rows, shuffle):
    # budget_rows 30 with batch 7: chunks of 28 rows; 3 < one batch: chunks of one batch.
    resident, streamed = make(), make(budget_rows * ROW_BYTES)
    hr = resident.fit(X, Y, batch_size=batch, epochs=3, shuffle=shuffle, verbose=0, validation_data=(X[:40], Y[:40]))
    data = streamed.upload(X, Y)
    assert data.streamed and "streamed to cpu from host memory" in repr(data)
    hs = streamed.fit(data, batch_size=batch, epochs=3, shuffle=shuffle, verbose=0,
                      validation_data=streamed.upload(X[:40], Y[:40]))
    assert hs.history == hr.history
    assert same_weights(resident, streamed)
    assert streamed._engine.step == resident._engine.step


@pytest.mark.parametrize("batch_size", [None, 8, 33])
def test_streamed_evaluate_and_predict_equal_resident(batch_size):
    resident, streamed = make(), make(20 * ROW_BYTES)
    assert streamed.upload(X).streamed
    resident.fit(X, Y, epochs=2, verbose=0)
    streamed.set_weights(resident.get_weights())
    assert streamed.evaluate(X, Y, batch_size=batch_size) == resident.evaluate(X, Y, batch_size=batch_size)
    np.testing.assert_array_equal(streamed.predict(X, batch_size=batch_size),
                                  resident.predict(X, batch_size=batch_size))


def test_arrays_passed_to_fit_are_streamed_when_over_budget():
    resident, streamed = make(), make(10 * ROW_BYTES)
    assert streamed.upload(X, Y).streamed  # what fit does with the arrays
    hr = resident.fit(X, Y, batch_size=10, epochs=2, verbose=0)
    hs = streamed.fit(X, Y, batch_size=10, epochs=2, verbose=0)
    assert hs.history == hr.history and same_weights(resident, streamed)
    assert not make().upload(X, Y).streamed  # the CPU's own budget is unlimited
    assert make()._engine.data_budget == 2 ** 64 - 1


def test_evaluate_and_predict_from_a_batch_hook_do_not_disturb_the_streamed_epoch():
    # The hook's evaluate/predict reuse the chunk buffers mid-epoch; training must reload its chunk.
    seen = []

    class Probe(C.Callback):
        batch_interval = 3

        def __init__(self, probe_data):
            super().__init__()
            self.probe_data = probe_data

        def on_train_batch_end(self, batch, logs=None):
            seen.append((self.model.evaluate(self.probe_data), self.model.predict(X[:5])))

    def run(budget):
        m = make(budget)
        h = m.fit(m.upload(X, Y), batch_size=7, epochs=2, verbose=0, callbacks=[Probe(m.upload(X[50:], Y[50:]))])
        return m, h

    resident, hr = run(None)
    resident_seen = list(seen)
    seen.clear()
    streamed, hs = run(30 * ROW_BYTES)
    assert hs.history == hr.history and same_weights(resident, streamed)
    assert len(seen) == len(resident_seen) == 2 * 5  # 15 batches per epoch in groups of 3
    for (ev_s, pr_s), (ev_r, pr_r) in zip(seen, resident_seen):
        assert ev_s == ev_r
        np.testing.assert_array_equal(pr_s, pr_r)


def test_streamed_data_shared_by_models_and_float64():
    owner = make(25 * ROW_BYTES)
    data = owner.upload(X, Y)
    assert data.streamed
    del owner
    other, reference = make(), make()
    assert other.fit(data, batch_size=10, epochs=2, verbose=0).history == \
        reference.fit(X, Y, batch_size=10, epochs=2, verbose=0).history
    r64, s64 = make(dtype="float64"), make(20 * 8 * 7, dtype="float64")
    assert s64.upload(X, Y).streamed
    assert s64.fit(X, Y, batch_size=9, epochs=2, verbose=0).history == \
        r64.fit(X, Y, batch_size=9, epochs=2, verbose=0).history
    assert same_weights(r64, s64)


def test_budget_set_before_compile_survives_recompile_and_none_restores():
    m = make(50 * ROW_BYTES)
    assert m._engine.data_budget == 50 * ROW_BYTES
    m.compile("sgd", "sparse_categorical_crossentropy", device="cpu")  # a new engine keeps the setting
    assert m._engine.data_budget == 50 * ROW_BYTES and m.upload(X, Y).streamed
    m.data_budget = None
    assert m._engine.data_budget == 2 ** 64 - 1 and not m.upload(X, Y).streamed
    for bad in (-1, 1.5, "big", True):
        with pytest.raises(ValueError, match="data_budget"):
            m.data_budget = bad


def test_whole_batch_calls_take_streamed_data_and_ignore_the_budget():
    # One batch must be resident anyway: train_on_batch / compute_gradients copy streamed rows in
    # for the call, so a small budget never makes them fail.
    resident, streamed = make(), make(10 * ROW_BYTES)
    data = streamed.upload(X, Y)
    assert data.streamed
    for gr, gs in zip(resident.compute_gradients(X, Y), streamed.compute_gradients(data)):
        np.testing.assert_array_equal(gr, gs)
    assert streamed.train_on_batch(data) == resident.train_on_batch(X, Y)
    assert streamed.train_on_batch(X[:64], Y[:64]) == resident.train_on_batch(X[:64], Y[:64])  # arrays over budget
    assert same_weights(resident, streamed)


def test_streamed_targets_are_a_copy_so_checked_class_ids_stay_valid():
    # float32 class ids come through validation as a view of the caller's array; changing that
    # array after the upload must not reach the (range-checked) targets of a streamed dataset.
    y = Y.astype(np.float32)
    m = make(10 * ROW_BYTES)
    data = m.upload(X, y)
    before = m.evaluate(data)
    y[:] = 2e9
    assert m.evaluate(data) == before
    m.fit(data, epochs=1, verbose=0)


def test_streamed_features_are_read_from_the_given_array_without_a_copy():
    # Streaming is for data too large to copy: the dataset keeps the (validated) array alive and
    # reads it in place, even after the caller drops it.
    x = X.copy()
    m = make(10 * ROW_BYTES)
    data = m.upload(x, Y)
    x[:] = 0.0  # in place: a streamed dataset sees it (documented)
    zero = make()
    np.testing.assert_array_equal(m.predict(data), zero.predict(np.zeros_like(X)))
    del x
    import gc

    gc.collect()
    assert np.isfinite(m.predict(data)).all()
