"""Every-N-batches callbacks (Callback.batch_interval): the native loop stops between groups of
batches, calls Python and goes on. The result must not depend on the grouping; the hooks must be
called at the documented batches with the running logs; a hook can stop training, change the
learning rate or save a checkpoint; misuse gets a clear error and leaves the model usable."""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import callbacks as C

RNG = np.random.default_rng(3)
X = RNG.normal(size=(160, 4)).astype(np.float32)
Y = (X[:, 0] - X[:, 1] > 0).astype(np.int64)
BATCH = 15  # 160 rows: 10 full batches and a last one of 10 -> 11 steps per epoch
STEPS = 11


def make(optimizer=None, seed=0):
    m = fm.Sequential([fm.Dense(8, "tanh", input_dim=4), fm.Dense(2, "softmax")], seed=seed)
    m.compile(optimizer or fm.optimizers.Adam(lr=1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"],
              device="cpu")
    return m


class Recorder(C.Callback):
    def __init__(self, n):
        super().__init__()
        self.batch_interval = n
        self.calls = []

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch", epoch))

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("end", batch, dict(logs)))


def same_weights(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights()))


@pytest.mark.parametrize("intervals", [[1], [3], [4], [11], [50], [3, 4]])
def test_training_is_bit_identical_with_batch_hooks(intervals):
    plain = make()
    h0 = plain.fit(X, Y, batch_size=BATCH, epochs=3, verbose=0)
    hooked = make()
    h1 = hooked.fit(X, Y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[Recorder(n) for n in intervals])
    assert h1.history == h0.history
    assert same_weights(plain, hooked)
    assert hooked._engine.step == plain._engine.step == 3 * STEPS


def test_hooks_are_called_per_group_of_n_batches_each_epoch():
    r3, r4 = Recorder(3), Recorder(4)
    make().fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[r3, r4])
    for rec, begins, ends in ((r3, [0, 3, 6, 9], [2, 5, 8, 10]), (r4, [0, 4, 8], [3, 7, 10])):
        expected = []
        for epoch in range(2):
            expected.append(("epoch", epoch))
            for b, e in zip(begins, ends):
                expected += [("begin", b), ("end", e)]
        assert [c[:2] for c in rec.calls] == expected


def test_batch_logs_are_the_running_means_of_the_epoch():
    # A twin trained with train_on_batch on the same (unshuffled) batches gives each batch's loss
    # and accuracy; the hook's logs must be their row-weighted running means.
    rec = Recorder(1)
    hist = make().fit(X, Y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False, callbacks=[rec])
    twin = make()
    losses, accs, rows = [], [], []
    for start in range(0, len(X), BATCH):
        xb, yb = X[start:start + BATCH], Y[start:start + BATCH]
        accs.append(twin.evaluate(xb, yb)["accuracy"])
        losses.append(twin.train_on_batch(xb, yb))
        rows.append(len(xb))
    ends = [c for c in rec.calls if c[0] == "end"]
    assert [c[1] for c in ends] == list(range(STEPS))
    cum_rows = np.cumsum(rows)
    for k, (_, _, logs) in enumerate(ends):
        assert logs["loss"] == pytest.approx(np.dot(losses[:k + 1], rows[:k + 1]) / cum_rows[k], rel=1e-5)
        assert logs["accuracy"] == pytest.approx(np.dot(accs[:k + 1], rows[:k + 1]) / cum_rows[k], abs=1e-9)
    assert ends[-1][2]["loss"] == hist.history["loss"][0]
    assert ends[-1][2]["accuracy"] == hist.history["accuracy"][0]


def test_stop_training_from_a_batch_hook_ends_the_epoch_there():
    class StopAfter(C.Callback):
        batch_interval = 2

        def on_train_batch_end(self, batch, logs=None):
            if batch == 5:
                self.model.stop_training = True

    rec = Recorder(1)
    m = make()
    h = m.fit(X, Y, batch_size=BATCH, epochs=4, verbose=0, callbacks=[StopAfter(), rec])
    assert h.epoch == [0]
    assert m._engine.step == 6  # batches 0..5 trained, then the epoch ended
    assert h.history["loss"][0] == [c for c in rec.calls if c[0] == "end"][-1][2]["loss"]
    assert not m._engine.epoch_in_progress


def test_learning_rate_changed_in_a_batch_hook_applies_from_the_next_batch():
    # SGD at 0.1 for batches 0-4, then 0.5: a twin stepping batch by batch with the same rates must
    # end at the same weights, and constant-rate training must not.
    class Raise(C.Callback):
        batch_interval = 5

        def on_train_batch_end(self, batch, logs=None):
            if batch == 4:
                self.model.set_learning_rate(0.5)

    changed = make(fm.optimizers.SGD(lr=0.1))
    changed.fit(X, Y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False, callbacks=[Raise()])
    twin = make(fm.optimizers.SGD(lr=0.1))
    for k, start in enumerate(range(0, len(X), BATCH)):
        if k == 5:
            twin.set_learning_rate(0.5)
        twin.train_on_batch(X[start:start + BATCH], Y[start:start + BATCH])
    for a, b in zip(changed.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    constant = make(fm.optimizers.SGD(lr=0.1))
    constant.fit(X, Y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    assert max(np.abs(a - b).max() for a, b in zip(changed.get_weights(), constant.get_weights())) > 1e-3


def test_weights_read_in_a_batch_hook_are_those_of_that_batch():
    seen = []
    m = make(fm.optimizers.SGD(lr=0.1))
    m.fit(X, Y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False,
          callbacks=[C.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(m.get_weights()))])
    assert len(seen) == STEPS
    twin = make(fm.optimizers.SGD(lr=0.1))
    for k, start in enumerate(range(0, len(X), BATCH)):
        twin.train_on_batch(X[start:start + BATCH], Y[start:start + BATCH])
        for a, b in zip(seen[k], twin.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_lambda_callback_batch_hooks_default_to_every_batch():
    ends, begins = [], []
    cb = C.LambdaCallback(on_train_batch_begin=lambda b, logs: begins.append(b),
                          on_train_batch_end=lambda b, logs: ends.append((b, sorted(logs))))
    make().fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[cb])
    assert begins == list(range(STEPS)) * 2
    assert ends == [(b, ["accuracy", "loss"]) for b in range(STEPS)] * 2
    assert C.LambdaCallback(on_epoch_end=lambda e, logs: None).batch_interval is None


def test_keras_aliases_on_batch_begin_and_end_are_called():
    class Old(C.Callback):
        batch_interval = 4

        def __init__(self):
            super().__init__()
            self.seen = []

        def on_batch_begin(self, batch, logs=None):
            self.seen.append(("b", batch))

        def on_batch_end(self, batch, logs=None):
            self.seen.append(("e", batch))

    cb = Old()
    make().fit(X, Y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[cb])
    assert cb.seen == [("b", 0), ("e", 3), ("b", 4), ("e", 7), ("b", 8), ("e", 10)]


def test_model_checkpoint_every_n_batches(tmp_path):
    ckpt = C.ModelCheckpoint(str(tmp_path / "e{epoch}-b{batch:02d}.fm"), save_freq=4)
    weights_at = {}

    class Spy(C.Callback):
        batch_interval = 4

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            weights_at[(self.epoch + 1, batch + 1)] = self.model.get_weights()

    make().fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[ckpt, Spy()])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["e1-b04.fm", "e1-b08.fm", "e2-b04.fm", "e2-b08.fm"]  # not after the short last group
    assert ckpt.last_saved == str(tmp_path / "e2-b08.fm")
    loaded = fm.load_model(tmp_path / "e1-b08.fm")
    for a, b in zip(loaded.get_weights(), weights_at[(1, 8)]):
        np.testing.assert_array_equal(a, b)


def test_model_checkpoint_best_of_batches_uses_running_training_logs(tmp_path):
    ckpt = C.ModelCheckpoint(str(tmp_path / "best.fm"), monitor="loss", save_best_only=True, save_freq=2)
    make().fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[ckpt])
    assert (tmp_path / "best.fm").exists() and np.isfinite(ckpt.best)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_bad_batch_interval_is_rejected(bad):
    class Bad(C.Callback):
        batch_interval = bad

    m = make()
    before = m.get_weights()
    with pytest.raises(ValueError, match="batch_interval"):
        m.fit(X, Y, epochs=1, verbose=0, callbacks=[Bad()])
    assert all(np.array_equal(a, b) for a, b in zip(before, m.get_weights()))  # nothing trained


def test_batch_hooks_without_batch_interval_warn_that_they_are_not_called():
    class PerBatch(C.Callback):
        def on_batch_end(self, batch, logs=None):
            raise AssertionError("must not be called")

    with pytest.warns(RuntimeWarning, match="batch_interval"):
        make().fit(X, Y, epochs=1, verbose=0, callbacks=[PerBatch()])


@pytest.mark.parametrize("action, word", [
    (lambda m: m.fit(X, Y, epochs=1, verbose=0), "already running"),
    (lambda m: m.train_on_batch(X[:4], Y[:4]), "while fit"),
])
def test_nested_training_from_a_batch_hook_is_refused(action, word):
    class Nested(C.Callback):
        batch_interval = 3

        def on_train_batch_end(self, batch, logs=None):
            action(self.model)

    m = make()
    with pytest.raises(RuntimeError, match=word):
        m.fit(X, Y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[Nested()])
    # The abandoned epoch does not linger: the model trains normally afterwards.
    assert not m._engine.epoch_in_progress
    m.train_on_batch(X[:8], Y[:8])
    m.fit(X, Y, batch_size=BATCH, epochs=1, verbose=0)


def test_exception_in_a_batch_hook_propagates_and_the_model_stays_usable():
    class Boom(C.Callback):
        batch_interval = 2

        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:
                raise KeyError("from the hook")

    m = make()
    with pytest.raises(KeyError, match="from the hook"):
        m.fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[Boom()])
    assert m._engine.step == 4
    h = m.fit(X, Y, batch_size=BATCH, epochs=1, verbose=0)
    assert np.isfinite(h.history["loss"][0]) and m._engine.step == 4 + STEPS


def test_native_epoch_pieces_contract():
    m = make()
    data = m.upload(X, Y)._native
    other = m.upload(X, Y)._native
    eng = m._engine
    with pytest.raises(RuntimeError, match="begin_epoch"):
        eng.train_batches(data, 1)
    eng.begin_epoch(data, 7, BATCH)
    assert eng.epoch_in_progress
    r = eng.train_batches(data, 0)
    assert r["steps"] == 0 and r["rows"] == 0 and not r["finished"]
    with pytest.raises(ValueError, match="other data"):
        eng.train_batches(other, 1)
    with pytest.raises(ValueError, match="max_batches"):
        eng.train_batches(data, -1)
    with pytest.raises(RuntimeError, match="epoch is in progress"):
        eng.train_on_batch(data)
    r = eng.train_batches(data, 4)
    assert (r["steps"], r["rows"], r["finished"]) == (4, 60, False)
    r = eng.train_batches(data, 100)
    assert (r["steps"], r["rows"], r["finished"]) == (STEPS, 160, True)
    assert not eng.epoch_in_progress
    # Pieces give the same epoch as one call from the same state and order.
    a, b = make(), make()
    ra = a._engine.train_epoch(a.upload(X, Y)._native, 7, BATCH)
    db = b.upload(X, Y)._native
    b._engine.begin_epoch(db, 7, BATCH)
    for n in (1, 2, 5, 3):
        rb = b._engine.train_batches(db, n)
    assert rb == ra
    assert same_weights(a, b)



def test_stop_training_set_outside_batch_hooks_acts_at_the_epoch_end_as_without_hooks():
    class StopEarly(C.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.model.stop_training = True

    plain, hooked = make(), make()
    h0 = plain.fit(X, Y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[StopEarly()])
    h1 = hooked.fit(X, Y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[StopEarly(), Recorder(2)])
    assert h0.epoch == h1.epoch == [0] and h1.history == h0.history
    assert hooked._engine.step == plain._engine.step == STEPS  # the whole epoch ran in both


def test_stop_training_from_a_begin_hook_ends_after_that_group():
    class StopAtBegin(C.Callback):
        batch_interval = 4

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 4:
                self.model.stop_training = True

    m = make()
    m.fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[StopAtBegin()])
    assert m._engine.step == 8  # the group of batches 4-7 ran, then the epoch ended


def test_a_batch_hook_stops_the_epoch_even_if_the_flag_was_already_set():
    class FlagEarly(C.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.model.stop_training = True

    class StopAt(C.Callback):
        batch_interval = 3

        def on_train_batch_end(self, batch, logs=None):
            if batch == 5:
                self.model.stop_training = True

    m = make()
    m.fit(X, Y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[FlagEarly(), StopAt()])
    assert m._engine.step == 6
