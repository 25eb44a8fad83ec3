"""Epoch callbacks: EarlyStopping, ModelCheckpoint, LearningRateScheduler, ReduceLROnPlateau,
TerminateOnNaN, CSVLogger and the failure paths (bad monitor, bad arguments). Batch hooks are in
test_batch_callbacks.py."""
import csv
import math

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import callbacks as C

RNG = np.random.default_rng(0)
X = RNG.normal(size=(160, 4)).astype(np.float32)
Y = (X[:, 0] - X[:, 1] > 0).astype(np.int64)
XV, YV = X[:40], Y[:40]


def make(lr=1e-2, seed=0, optimizer=None):
    m = fm.Sequential([fm.Dense(8, "relu", input_dim=4), fm.Dense(2, "softmax")], seed=seed)
    m.compile(optimizer or fm.optimizers.Adam(lr=lr), "sparse_categorical_crossentropy", metrics=["accuracy"],
              device="cpu")
    return m


class Scripted(C.Callback):
    """Replaces the epoch's logs[key] with scripted values before the callbacks after it see them."""

    def __init__(self, key, values):
        super().__init__()
        self.key, self.values = key, list(values)

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]


def test_early_stopping_stops_after_patience():
    es = C.EarlyStopping(monitor="val_loss", patience=2)
    m = make()
    h = m.fit(X, Y, epochs=20, verbose=0, validation_data=(XV, YV),
              callbacks=[Scripted("val_loss", [1.0, 0.9, 0.95, 0.92, 0.5] + [0.1] * 15), es])
    # best at epoch 1; epochs 2 and 3 do not improve -> stop after epoch 3
    assert len(h.epoch) == 4 and es.stopped_epoch == 3 and es.best == 0.9
    assert m.stop_training


def test_early_stopping_min_delta_mode_max_and_baseline():
    es = C.EarlyStopping(monitor="val_accuracy", min_delta=0.05, patience=1)
    assert es.mode == "max"
    h = make().fit(X, Y, epochs=10, verbose=0, validation_data=(XV, YV),
                   callbacks=[Scripted("val_accuracy", [0.5, 0.52, 0.53, 0.9] + [1.0] * 6), es])
    assert len(h.epoch) == 2  # +0.02 is below min_delta
    flat = Scripted("val_loss", [0.9] * 10)
    h = make().fit(X, Y, epochs=10, verbose=0, validation_data=(XV, YV),
                   callbacks=[flat, C.EarlyStopping(monitor="val_loss", patience=2)])
    assert len(h.epoch) == 3
    # Keras 3 semantics: an epoch that does not beat the baseline does not reset the wait counter
    h = make().fit(X, Y, epochs=10, verbose=0, validation_data=(XV, YV),
                   callbacks=[flat, C.EarlyStopping(monitor="val_loss", patience=2, baseline=0.1)])
    assert len(h.epoch) == 2


def test_early_stopping_restores_best_weights_and_start_from_epoch():
    m = make()
    snapshots = []
    grab = C.LambdaCallback(on_epoch_end=lambda e, logs: snapshots.append(m.get_weights()))
    es = C.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    m.fit(X, Y, epochs=10, verbose=0, validation_data=(XV, YV),
          callbacks=[grab, Scripted("val_loss", [0.5, 0.2, 0.3, 0.4] + [0.0] * 6), es])
    assert es.best_epoch == 1 and len(snapshots) == 3
    for a, b in zip(m.get_weights(), snapshots[1]):
        np.testing.assert_array_equal(a, b)
    es = C.EarlyStopping(monitor="loss", patience=0, start_from_epoch=3)
    h = make().fit(X, Y, epochs=8, verbose=0, callbacks=[Scripted("loss", [1, 2, 3, 4, 5, 6, 7, 8]), es])
    assert len(h.epoch) == 5  # epochs 0-2 ignored, epoch 3 sets best, epoch 4 fails


def test_monitor_missing_warns_with_available_names():
    es = C.EarlyStopping(monitor="val_loss", patience=0)
    with pytest.warns(RuntimeWarning, match=r"'val_loss'.*available: accuracy, loss.*validation_data"):
        h = make().fit(X, Y, epochs=3, verbose=0, callbacks=[es])
    assert len(h.epoch) == 3  # no stop without the monitored value
    with pytest.warns(RuntimeWarning, match="val_acc"):
        make().fit(X, Y, epochs=1, verbose=0, validation_data=(XV, YV),
                   callbacks=[C.ReduceLROnPlateau(monitor="val_acc")])


@pytest.mark.parametrize("make_cb, exc, word", [
    (lambda: C.EarlyStopping(mode="biggest"), ValueError, "mode"),
    (lambda: C.EarlyStopping(monitor=""), ValueError, "monitor"),
    (lambda: C.EarlyStopping(patience=-1), ValueError, "patience"),
    (lambda: C.EarlyStopping(baseline=float("nan")), ValueError, "baseline"),
    (lambda: C.ReduceLROnPlateau(factor=1.0), ValueError, "factor"),
    (lambda: C.ReduceLROnPlateau(min_lr=-1), ValueError, "min_lr"),
    (lambda: C.LearningRateScheduler(0.1), TypeError, "callable"),
    (lambda: C.CSVLogger("x.csv", separator=";;"), ValueError, "separator"),
    (lambda: C.ModelCheckpoint("m.fm", save_freq=0), ValueError, "save_freq"),
    (lambda: C.ModelCheckpoint("m.fm", save_freq="batch"), ValueError, "save_freq"),
    (lambda: C.ModelCheckpoint("m.fm", save_freq=True), ValueError, "save_freq"),
    (lambda: C.LambdaCallback(on_train_batch_end=3), TypeError, "callable"),
])
def test_bad_arguments(make_cb, exc, word):
    with pytest.raises(exc, match=word):
        make_cb()


def test_learning_rate_scheduler_sets_rate_before_each_epoch():
    seen = []
    m = make(lr=0.1)
    lrs = C.LearningRateScheduler(lambda epoch, lr: lr * 0.5)
    m.fit(X, Y, epochs=3, verbose=0,
          callbacks=[lrs, C.LambdaCallback(on_epoch_begin=lambda e, logs: seen.append(m.get_learning_rate()))])
    assert seen == pytest.approx([0.05, 0.025, 0.0125])
    m2 = make(lr=0.1)
    m2.fit(X, Y, epochs=2, verbose=0, callbacks=[C.LearningRateScheduler(lambda epoch: 0.01 * (epoch + 1))])
    assert m2.get_learning_rate() == pytest.approx(0.02)
    with pytest.raises(ValueError, match="finite number >= 0"):
        make().fit(X, Y, epochs=1, verbose=0, callbacks=[C.LearningRateScheduler(lambda e, lr: -1.0)])


def test_scheduler_changes_training():
    a, b = make(lr=0.05), make(lr=0.05)
    a.fit(X, Y, epochs=2, verbose=0, shuffle=False)
    b.fit(X, Y, epochs=2, verbose=0, shuffle=False, callbacks=[C.LearningRateScheduler(lambda e, lr: 1e-6)])
    moved_a = np.abs(a.get_weights()[0] - make(lr=0.05).get_weights()[0]).max()
    moved_b = np.abs(b.get_weights()[0] - make(lr=0.05).get_weights()[0]).max()
    assert moved_b < 1e-3 < moved_a


def test_reduce_lr_on_plateau_with_cooldown_and_min_lr():
    m = make(lr=1.0)
    rl = C.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, cooldown=2, min_lr=0.3)
    rates = []
    m.fit(X, Y, epochs=7, verbose=0,
          callbacks=[Scripted("loss", [1.0] * 7), rl,
                     C.LambdaCallback(on_epoch_end=lambda e, logs: rates.append(m.get_learning_rate()))])
    # epoch 0 sets best; 1 stalls -> 0.5; 2 cooldown; 3 stalls -> 0.3 (min_lr); 4 cooldown; 5 at min_lr -> stays
    # (as in Keras, the last cooldown epoch already counts towards patience)
    assert rates == pytest.approx([1.0, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3])


def test_terminate_on_nan_stops_cleanly():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(64, 3)) * 100, rng.normal(size=(64, 1)) * 100
    m = fm.Sequential([fm.Dense(16, activation="relu", input_dim=3), fm.Dense(1)], seed=0)
    m.compile(optimizer=fm.optimizers.SGD(lr=10.0), loss="mse", device="cpu")
    t = C.TerminateOnNaN()
    h = m.fit(x, y, epochs=20, batch_size=8, verbose=0, callbacks=[t])  # no NonFiniteLossError
    assert t.terminated_epoch is not None and len(h.epoch) == t.terminated_epoch + 1
    assert not math.isfinite(h.history["loss"][-1])
    assert all(np.isfinite(w).all() for w in m.get_weights())
    m2 = fm.Sequential([fm.Dense(16, activation="relu", input_dim=3), fm.Dense(1)], seed=0)
    m2.compile(optimizer=fm.optimizers.SGD(lr=10.0), loss="mse", device="cpu")
    with pytest.raises(fm.NonFiniteLossError):  # without the callback fit still raises
        m2.fit(x, y, epochs=20, batch_size=8, verbose=0)


def test_csv_logger_writes_and_appends(tmp_path):
    path = tmp_path / "log.csv"
    m = make()
    m.fit(X, Y, epochs=2, verbose=0, validation_data=(XV, YV), callbacks=[C.CSVLogger(path)])
    rows = list(csv.reader(open(path)))
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [r[0] for r in rows[1:]] == ["0", "1"]
    assert float(rows[2][2]) == pytest.approx(m.history.history["loss"][1])
    m.fit(X, Y, epochs=1, verbose=0, validation_data=(XV, YV), callbacks=[C.CSVLogger(path, append=True)])
    rows = list(csv.reader(open(path)))
    assert len(rows) == 4 and rows.count(rows[0]) == 1
    m.fit(X, Y, epochs=1, verbose=0, callbacks=[C.CSVLogger(path, separator=";")])
    text = open(path).read().splitlines()
    assert text[0] == "epoch;accuracy;loss" and len(text) == 2


def test_model_checkpoint_formats_path_and_saves_best_only(tmp_path):
    m = make()
    ck = C.ModelCheckpoint(str(tmp_path / "m-{epoch:02d}-{val_loss:.1f}.fm"))
    m.fit(X, Y, epochs=2, verbose=0, validation_data=(XV, YV),
          callbacks=[Scripted("val_loss", [0.5, 0.25]), ck])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-01-0.5.fm", "m-02-0.2.fm"]
    best = C.ModelCheckpoint(str(tmp_path / "best.fm"), monitor="val_loss", save_best_only=True)
    saved = []
    spy = C.LambdaCallback(on_epoch_end=lambda e, logs: saved.append(best.last_saved))
    m.fit(X, Y, epochs=4, verbose=0, validation_data=(XV, YV),
          callbacks=[Scripted("val_loss", [0.5, 0.6, 0.4, 0.45]), best, spy])
    assert best.best == 0.4 and (tmp_path / "best.fm").exists()
    loaded = fm.load_model(tmp_path / "best.fm")
    assert loaded.count_params() == m.count_params()
    with pytest.raises(KeyError, match="val_auc"):
        make().fit(X, Y, epochs=1, verbose=0, callbacks=[C.ModelCheckpoint(str(tmp_path / "{val_auc}.fm"))])


def test_custom_callback_hooks_order_and_params():
    calls = []

    class Rec(C.Callback):
        def on_train_begin(self, logs=None):
            calls.append(("train_begin", self.params["epochs"], self.params["steps"]))

        def on_epoch_begin(self, epoch, logs=None):
            calls.append(("epoch_begin", epoch))

        def on_epoch_end(self, epoch, logs=None):
            calls.append(("epoch_end", epoch, sorted(logs)))

        def on_train_end(self, logs=None):
            calls.append(("train_end",))

    make().fit(X, Y, epochs=2, batch_size=32, verbose=0, callbacks=[Rec()])
    assert calls == [("train_begin", 2, 5), ("epoch_begin", 0), ("epoch_end", 0, ["accuracy", "loss"]),
                     ("epoch_begin", 1), ("epoch_end", 1, ["accuracy", "loss"]), ("train_end",)]
    with pytest.raises(TypeError, match="Callback instances"):
        make().fit(X, Y, epochs=1, verbose=0, callbacks=[lambda: None])
