"""Callbacks for Sequential.fit, called at epoch granularity by the native training loop.

Subclass Callback and override any of on_train_begin/on_train_end/on_epoch_begin/on_epoch_end.
`self.model` is the model being trained; setting `self.model.stop_training = True` ends fit
after the current epoch. `logs` holds "loss", the metric and their "val_" versions.
"""
from __future__ import annotations


class Callback:
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


class CallbackList:
    def __init__(self, callbacks, model, params):
        self.callbacks = list(callbacks or [])
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be fm.callbacks.Callback instances, got {type(cb).__name__}")
            cb.set_model(model)
            cb.set_params(params)

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call(*args, **kwargs):
            for cb in self.callbacks:
                getattr(cb, hook)(*args, **kwargs)

        return call


__all__ = ["Callback", "History", "CallbackList"]
