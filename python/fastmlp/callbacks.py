"""Callbacks for Sequential.fit, called by the native training loop between epochs and, for
callbacks that ask, between groups of batches.

The native engine runs an epoch (shuffle, batches, updates) in C++ and returns to Python once per
epoch, unless a callback sets `batch_interval`:

    on_train_begin(logs)           once, before the first epoch
    on_epoch_begin(epoch, logs)    before each epoch (epoch counts from 0); changing the learning
                                   rate here (model.set_learning_rate) applies from the next step
    on_train_batch_begin(batch, logs)   only with batch_interval = N (see below)
    on_train_batch_end(batch, logs)     only with batch_interval = N (see below)
    on_epoch_end(epoch, logs)      after each epoch; logs holds "loss", the compiled metric
                                   ("accuracy"/"mae") and, with validation data, "val_loss",
                                   "val_accuracy", ...
    on_train_end(logs)             once, after the last epoch (also after an early stop)

`self.model` is the model being trained and `self.params` holds epochs, batch_size, samples,
steps (batches per epoch) and verbose. Setting `self.model.stop_training = True` ends fit after
the current epoch (from a batch hook: after the current group of batches, and the epoch ends
there with logs over the batches trained).

Two class (or instance) attributes configure how fit treats a callback:

    handles_nonfinite = False   When any callback sets it to True, fit does not raise
                                fm.NonFiniteLossError when the training loss becomes NaN/Inf:
                                it reports the epoch with its non-finite "loss" to on_epoch_end
                                and the callback decides (TerminateOnNaN stops training). The
                                native loop keeps the weights of the last finite step either way.
    batch_interval = None       An integer N >= 1 asks for batch hooks: each epoch's batches are
                                taken in groups of N (the last group may be shorter), like Keras
                                with steps_per_execution=N. on_train_batch_begin(b) is called
                                before the group whose first batch is b, on_train_batch_end(b, logs)
                                after the group whose last batch is b (0-based within the epoch),
                                with logs holding the running mean "loss" and metric of the epoch so
                                far. The native loop runs each group without Python in between, so
                                training is bit-identical with or without the hooks; each group
                                costs one return to Python (and one device sync on CUDA), so
                                small N slows training. on_batch_begin / on_batch_end are aliases
                                (the base class forwards to them, as in Keras).

Built in: History (always added by fit), EarlyStopping, ModelCheckpoint (also save_freq=N
batches), LearningRateScheduler, ReduceLROnPlateau, TerminateOnNaN, CSVLogger, LambdaCallback.
"""
from __future__ import annotations

import csv
import math
import os
import sys
import warnings

import numpy as np

from ._validation import real_number


class Callback:
    """Base class: override any of the on_* hooks (see the module docstring)."""

    handles_nonfinite = False
    batch_interval = None
    writes_files = False  # data-parallel fit runs such callbacks on rank 0 only (fastmlp.distributed)

    def __init__(self):
        self.model = None
        self.params: dict = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params: dict):
        self.params = params

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    # Batch hooks: called only when batch_interval is set (see the module docstring).
    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs)

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass


_BATCH_HOOKS = ("on_batch_begin", "on_batch_end", "on_train_batch_begin", "on_train_batch_end")


def _overridden_batch_hooks(cb) -> list[str]:
    return [h for h in _BATCH_HOOKS if getattr(type(cb), h, None) is not getattr(Callback, h)]


class History(Callback):
    """Per-epoch logs: history.history["loss"][i] is epoch i's mean training loss."""

    def __init__(self):
        super().__init__()
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)

    def plot(self, metrics=None, path=None, ax=None):
        """Loss and metric curves, training vs validation (needs matplotlib)."""
        from .plot import history as _plot_history

        return _plot_history(self, metrics=metrics, path=path, ax=ax)


# ------------------------------------------------------------------------------ helpers
def _resolve_mode(mode: str, monitor: str) -> str:
    """'min' or 'max'; 'auto' picks 'max' for accuracy-like monitors, 'min' otherwise (Keras)."""
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"monitor must be a log name such as 'val_loss', got {monitor!r}")
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        name = monitor[4:] if monitor.startswith("val_") else monitor
        return "max" if ("acc" in name or name in ("auc", "r2", "score", "fmeasure")) else "min"
    return mode


def _finite(name, v) -> float:
    return real_number(v, name)  # Python or NumPy numbers; 10**400 is a ValueError


def _non_negative(name, v) -> float:
    v = _finite(name, v)
    if v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return v


def _count(name, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    return int(v)


class _Monitor:
    """Reads the monitored value from logs, warning once (with the available names) when absent."""

    def __init__(self, owner: str, monitor: str, mode: str):
        self.owner = owner
        self.monitor = monitor
        self.mode = _resolve_mode(mode, monitor)
        self._warned = False

    def get(self, logs):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            if not self._warned:
                self._warned = True
                hint = ""
                if self.monitor.startswith("val_") and not any(k.startswith("val_") for k in logs):
                    hint = " (validation metrics need validation_data or validation_split in fit)"
                warnings.warn(f"{self.owner} is conditioned on {self.monitor!r}, which is not in the logs; "
                              f"available: {', '.join(sorted(logs)) or 'none'}{hint}", RuntimeWarning, stacklevel=3)
            return None
        return float(value)

    def better(self, current: float, reference: float, min_delta: float = 0.0) -> bool:
        """current improves on reference by more than min_delta (NaN never improves)."""
        if self.mode == "min":
            return bool(np.less(current + min_delta, reference))
        return bool(np.greater(current - min_delta, reference))

    def worst(self) -> float:
        return math.inf if self.mode == "min" else -math.inf


def _print(msg: str):
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------------------ callbacks
class EarlyStopping(Callback):
    """Stops training when `monitor` has not improved by more than min_delta for `patience` epochs.

    Keras semantics: mode 'auto' maximizes accuracy-like monitors and minimizes the rest;
    baseline: training stops unless the monitored value beats it within `patience` epochs;
    start_from_epoch: epochs before it are not monitored (warm-up); restore_best_weights: at the
    end of training the weights of the best epoch are put back (the best seen, even when training
    ran to `epochs` without stopping early). After fit, `stopped_epoch` is the 0-based epoch at
    which training stopped (0 if it did not) and `best_epoch` the best one.
    A monitor missing from the logs gives a RuntimeWarning naming the available logs and no stop.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        self._mon = _Monitor("EarlyStopping", monitor, mode)
        self.monitor = monitor
        self.mode = self._mon.mode
        self.min_delta = abs(_finite("min_delta", min_delta))  # Keras uses |min_delta|
        self.patience = _count("patience", patience)
        self.start_from_epoch = _count("start_from_epoch", start_from_epoch)
        self.baseline = None if baseline is None else _finite("baseline", baseline)
        self.restore_best_weights = bool(restore_best_weights)
        self.verbose = int(verbose)
        self._reset()

    def _reset(self):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = self._mon.worst()
        self.best_weights = None
        self.best_epoch = 0

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        current = self._mon.get(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()  # something to restore even if nothing improves
            self.best_epoch = epoch
        self.wait += 1
        if self._mon.better(current, self.best, self.min_delta):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._mon.better(current, self.baseline, self.min_delta):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            _print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                _print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Saves the model (model.save) after every epoch, or only when `monitor` improves.

    `filepath` may hold str.format fields filled from the epoch (1-based), the batch (1-based,
    with save_freq=N) and the logs, e.g. "ckpt-{epoch:02d}-{val_loss:.3f}.fm". `save_freq` is
    "epoch", or an integer N: save after every N-th batch of each epoch instead, judged on the
    running training logs ("loss", "accuracy": validation logs exist only at epoch ends); such a
    mid-epoch file holds the weights and optimizer state of that batch. `last_saved` holds the path
    of the latest file written. save_weights_only=True writes model.save_weights files (the name
    must end in .weights.npz) instead of whole models.
    """

    writes_files = True

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, mode="auto",
                 save_freq="epoch", initial_value_threshold=None, save_weights_only=False):
        super().__init__()
        self.filepath = os.fspath(filepath)
        self.save_weights_only = bool(save_weights_only)
        from .model_structure import WEIGHTS_SUFFIX, refuse_foreign_suffix

        if self.save_weights_only and not self.filepath.endswith(WEIGHTS_SUFFIX):
            raise ValueError(f"with save_weights_only=True the filepath must end in {WEIGHTS_SUFFIX}, got "
                             f"{self.filepath!r}")
        if not self.save_weights_only:
            refuse_foreign_suffix(self.filepath, "ModelCheckpoint", '".fm"')
        self._mon = _Monitor("ModelCheckpoint", monitor, mode)
        self.monitor = monitor
        self.mode = self._mon.mode
        self.save_best_only = bool(save_best_only)
        self.verbose = int(verbose)
        if save_freq != "epoch":
            if isinstance(save_freq, bool) or not isinstance(save_freq, (int, np.integer)) or save_freq < 1:
                raise ValueError(f"save_freq must be 'epoch' or a number of batches >= 1, got {save_freq!r}")
            self.batch_interval = int(save_freq)
            self.on_train_batch_end = self._save_after_batch  # only then: no warning, no slowdown
        self.save_freq = save_freq
        self.best = self._mon.worst() if initial_value_threshold is None else float(initial_value_threshold)
        self.last_saved = None
        self._epoch = 0

    def _path(self, epoch, batch, logs):
        fields = dict(logs or {}, epoch=epoch + 1)
        if batch is not None:
            fields["batch"] = batch + 1
        try:
            return self.filepath.format(**fields)
        except KeyError as exc:
            raise KeyError(f"ModelCheckpoint filepath {self.filepath!r} uses {exc}, which is not in the logs; "
                           f"available: {', '.join(sorted(fields))}") from None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _save_after_batch(self, batch, logs=None):
        if (batch + 1) % self.batch_interval == 0:  # not after a shorter last group
            self._save(self._epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, None, logs)

    def _save(self, epoch, batch, logs):
        path = self._path(epoch, batch, logs)
        where = f"Epoch {epoch + 1}" + ("" if batch is None else f", batch {batch + 1}")
        if self.save_best_only:
            current = self._mon.get(logs)
            if current is None:
                return
            if not self._mon.better(current, self.best):
                if self.verbose > 0:
                    _print(f"{where}: {self.monitor} did not improve from {self.best:.5f}")
                return
            if self.verbose > 0:
                _print(f"{where}: {self.monitor} improved from {self.best:.5f} to {current:.5f}, "
                       f"saving model to {path}")
        elif self.verbose > 0:
            _print(f"{where}: saving model to {path}")
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        # model.save writes atomically under a fresh temporary name (fastmlp.saving): a crash or
        # a planted symlink can neither damage the previous checkpoint nor redirect the write
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        if self.save_best_only:  # only now: a failed save must not raise the bar for the next one
            self.best = current
        self.last_saved = path


class LearningRateScheduler(Callback):
    """Sets the learning rate before each epoch: lr = schedule(epoch, current_lr) (or schedule(epoch)).

    For per-step schedules evaluated natively inside the epoch use fm.schedules as the optimizer's
    lr instead; this callback changes the optimizer's base rate between epochs
    (model.set_learning_rate), which a schedule then scales.
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"schedule must be a callable (epoch, lr) -> lr, got {type(schedule).__name__}")
        self.schedule = schedule
        self.verbose = int(verbose)

    def on_epoch_begin(self, epoch, logs=None):
        lr = self.model.get_learning_rate()
        try:
            new_lr = self.schedule(epoch, lr)
        except TypeError:  # Keras also accepts schedule(epoch)
            new_lr = self.schedule(epoch)

        # lr = 0 is valid (Keras and PyTorch accept it, e.g. a warm-up from 0); 10**400 is not finite
        try:
            new_lr = real_number(new_lr, "lr", low=0.0)
        except ValueError:
            raise ValueError(f"the learning-rate schedule returned {new_lr!r} for epoch {epoch}; it must return a "
                             "finite number >= 0") from None
        self.model.set_learning_rate(new_lr)
        if self.verbose > 0:
            _print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(new_lr):.6g}.")


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by `factor` when `monitor` stalls for `patience` epochs (Keras).

    An epoch improves when it beats the best value by more than min_delta. After a reduction the
    callback waits `cooldown` epochs before counting again; the rate never goes below min_lr.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, (int, float, np.integer, np.floating)) \
                or not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau factor must be in (0, 1), got {factor!r}")
        self._mon = _Monitor("ReduceLROnPlateau", monitor, mode)
        self.monitor = monitor
        self.mode = self._mon.mode
        self.factor = float(factor)
        self.patience = _count("patience", patience)
        self.cooldown = _count("cooldown", cooldown)

        # real_number: NumPy scalars accepted, and 10**400 is a ValueError rather than an OverflowError
        self.min_delta = real_number(min_delta, "min_delta", low=0.0)
        self.min_lr = real_number(min_lr, "min_lr", low=0.0)  # 0 (the default) lets the rate reach 0
        self.verbose = int(verbose)
        self._reset()

    def _reset(self):
        self.best = self._mon.worst()
        self.wait = 0
        self.cooldown_counter = 0

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        current = self._mon.get(logs)
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._mon.better(current, self.best, self.min_delta):
            self.best = current
            self.wait = 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = self.model.get_learning_rate()
                if old > self.min_lr:
                    new = max(old * self.factor, self.min_lr)  # may be 0 with min_lr = 0: a valid rate
                    self.model.set_learning_rate(new)
                    if self.verbose > 0:
                        _print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new:.6g}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class TerminateOnNaN(Callback):
    """Stops training cleanly when the training loss becomes NaN or Inf.

    Without it, fit raises fm.NonFiniteLossError. With it (handles_nonfinite = True) fit finishes
    that epoch normally — History, CSVLogger etc. record the non-finite loss — and returns; the
    model keeps the weights of its last step with a finite loss. `terminated_epoch` is the
    0-based epoch at which it stopped training (None if it did not).
    """

    handles_nonfinite = True

    def __init__(self):
        super().__init__()
        self.terminated_epoch = None

    def on_train_begin(self, logs=None):
        self.terminated_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.terminated_epoch = epoch
            _print(f"Epoch {epoch + 1}: invalid loss, terminating training")
            self.model.stop_training = True


class CSVLogger(Callback):
    """Writes one CSV row per epoch: "epoch" (0-based, as Keras) and the logs in sorted order.

    append=True adds to an existing file (writing the header only when the file is new or empty).
    Rows are flushed as they are written, so the file is readable while training runs.
    """

    writes_files = True

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename = os.fspath(filename)
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"separator must be a single character, got {separator!r}")
        self.sep = separator
        self.append = bool(append)
        self._file = None
        self._writer = None
        self._keys = None

    def on_train_begin(self, logs=None):
        write_header = True
        if self.append and os.path.exists(self.filename):
            with open(self.filename, newline="") as f:
                first = f.readline()
            if first.strip():
                write_header = False
                self._keys = [k for k in first.strip().split(self.sep) if k != "epoch"]
        else:
            self._keys = None
        self._file = open(self.filename, "a" if self.append else "w", newline="")
        self._write_header = write_header

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._keys is None:
            self._keys = sorted(logs)
        if self._writer is None:
            self._writer = csv.writer(self._file, delimiter=self.sep, lineterminator="\n")
            if self._write_header:
                self._writer.writerow(["epoch"] + self._keys)
        self._writer.writerow([epoch] + [_csv_value(logs.get(k, "NA")) for k in self._keys])
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
        self._file = None
        self._writer = None

    def __del__(self):
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()


def _csv_value(v):
    return repr(float(v)) if isinstance(v, (float, np.floating)) else v


class LambdaCallback(Callback):
    """A callback from plain functions: LambdaCallback(on_epoch_end=lambda epoch, logs: ...).
    Epoch and batch hooks get (epoch or batch, logs), train hooks (logs); logs is {} when fit
    passes none. Batch hooks are called every `batch_interval` batches (default 1: every batch,
    which returns to Python after each batch; see the module docstring)."""

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None, on_train_end=None,
                 on_train_batch_begin=None, on_train_batch_end=None, batch_interval=1):
        super().__init__()
        for name, fn in (("on_epoch_begin", on_epoch_begin), ("on_epoch_end", on_epoch_end),
                         ("on_train_begin", on_train_begin), ("on_train_end", on_train_end),
                         ("on_train_batch_begin", on_train_batch_begin), ("on_train_batch_end", on_train_batch_end)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        self._epoch_begin, self._epoch_end = on_epoch_begin, on_epoch_end
        self._train_begin, self._train_end = on_train_begin, on_train_end
        # Batch hooks exist only when given, so a LambdaCallback without them never slows fit.
        for name, fn in (("on_train_batch_begin", on_train_batch_begin), ("on_train_batch_end", on_train_batch_end)):
            if fn is not None:
                setattr(self, name, lambda batch, logs=None, _fn=fn: _fn(batch, logs if logs is not None else {}))
                self.batch_interval = batch_interval

    def on_epoch_begin(self, epoch, logs=None):
        if self._epoch_begin is not None:
            self._epoch_begin(epoch, logs if logs is not None else {})

    def on_epoch_end(self, epoch, logs=None):
        if self._epoch_end is not None:
            self._epoch_end(epoch, logs if logs is not None else {})

    def on_train_begin(self, logs=None):
        if self._train_begin is not None:
            self._train_begin(logs if logs is not None else {})

    def on_train_end(self, logs=None):
        if self._train_end is not None:
            self._train_end(logs if logs is not None else {})


class CallbackList:
    def __init__(self, callbacks, model, params):
        self.callbacks = list(callbacks or [])
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be fm.callbacks.Callback instances, got {type(cb).__name__}")
            n = cb.batch_interval
            if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
                raise ValueError(f"{type(cb).__name__}.batch_interval must be None or an integer >= 1, got {n!r}")
            overridden = _overridden_batch_hooks(cb)
            if overridden and n is None:
                warnings.warn(f"{type(cb).__name__} defines {', '.join(overridden)}, which fit calls only when the "
                              "callback sets batch_interval = N (batches per call)", RuntimeWarning, stacklevel=3)
        for cb in self.callbacks:
            cb.set_model(model)
            cb.set_params(params)

    @property
    def batch_callbacks(self) -> list:
        """The callbacks that asked for batch hooks (batch_interval set)."""
        return [cb for cb in self.callbacks if cb.batch_interval is not None]

    @property
    def handles_nonfinite(self) -> bool:
        """True when a callback (e.g. TerminateOnNaN) takes over non-finite training losses."""
        return any(getattr(cb, "handles_nonfinite", False) for cb in self.callbacks)

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call(*args, **kwargs):
            for cb in self.callbacks:
                getattr(cb, hook)(*args, **kwargs)

        return call


__all__ = ["Callback", "History", "CallbackList", "EarlyStopping", "ModelCheckpoint", "LearningRateScheduler",
           "ReduceLROnPlateau", "TerminateOnNaN", "CSVLogger", "LambdaCallback"]
