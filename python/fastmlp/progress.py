"""Per-epoch progress output for fit.

verbose=0  silent.
verbose=1  on a terminal: a live tqdm bar per epoch (Keras-style) over the epoch's samples, with
           the running loss and metric; when the epoch ends its bar shows the epoch's metrics
           (loss, accuracy, val_*) and samples/s and stays as one line. The bar advances through
           a batch hook (Callback.batch_interval) whose interval adapts to the measured speed so
           the native loop returns to Python about every `update_seconds` (the first epoch: ten
           times); an epoch shorter than that runs without interruption. Training is
           bit-identical either way. While the native loop runs it releases the GIL and a small
           thread refreshes the bar's elapsed time.
           When the stream is not a terminal (a log file, a pipe, CI), or tqdm is not installed,
           verbose=1 prints the same plain lines as verbose=2.
verbose=2  one plain line per epoch:
           "Epoch 3/10 - 0.12s - 51,234 samples/s - loss: 0.4120 - accuracy: 0.8750"

Plain lines never contain carriage returns or ANSI control sequences, so logs stay readable.
"""
from __future__ import annotations

import os
import sys
import threading

from .callbacks import Callback


def _is_tty(stream) -> bool:
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    try:  # a terminal of width 0 (e.g. a pseudo-terminal nobody sized) would show an empty bar
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):  # no file descriptor (a test's fake terminal)
        return True


def _format_metric(v) -> str:
    try:
        return f"{float(v):.4f}"
    except (TypeError, ValueError):
        return str(v)


def _rate(samples: int, seconds: float) -> float:
    return samples / seconds if seconds > 0 else float("inf")


def epoch_line(epoch: int, epochs: int, logs: dict, seconds: float, samples: int) -> str:
    """The plain one-line summary of an epoch (no control characters)."""
    metrics = " - ".join(f"{k}: {_format_metric(v)}" for k, v in logs.items())
    line = f"Epoch {epoch + 1}/{epochs} - {seconds:.2f}s - {_rate(samples, seconds):,.0f} samples/s"
    return f"{line} - {metrics}" if metrics else line


class EpochProgress:
    """Used by Sequential.fit: begin(epoch) before, end(epoch, logs, seconds) after each epoch,
    batch(batch, logs) from the batch hook (hook()), close() when training ends (also on errors).
    `mode` is 'silent', 'bar' or 'lines'."""

    refresh_seconds = 0.5  # elapsed-time refresh while the native loop runs
    update_seconds = 0.25  # target time between returns of the native loop for the bar

    def __init__(self, verbose: int, epochs: int, samples: int, stream=None, batch_size: int = 1):
        self.verbose = int(verbose)
        self.epochs = int(epochs)
        self.samples = int(samples)
        self.stream = stream if stream is not None else sys.stdout
        self._batch_size = max(1, int(batch_size))
        self.steps = max(1, -(-self.samples // self._batch_size))
        # Batches per bar update in the coming epoch; the first epoch's speed is unknown: ten updates.
        self.batch_interval = max(1, -(-self.steps // 10))
        self._bar = None
        self._ticker = None
        self._stop = None
        self._lock = threading.Lock()
        if self.verbose <= 0:
            self.mode = "silent"
        elif self.verbose == 1 and _is_tty(self.stream) and self._tqdm() is not None:
            self.mode = "bar"
        else:
            self.mode = "lines"

    @staticmethod
    def _tqdm():
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm

    # ------------------------------------------------------------------ bar mode
    def _tick(self, stop: threading.Event):
        while not stop.wait(self.refresh_seconds):
            with self._lock:
                if self._bar is not None:
                    self._bar.refresh()

    def begin(self, epoch: int):
        if self.mode != "bar":
            return
        tqdm = self._tqdm()
        with self._lock:
            # No tqdm rate: the postfix carries samples/s measured around the native epoch.
            self._bar = tqdm(total=self.samples, file=self.stream, dynamic_ncols=True, leave=True,
                             desc=f"Epoch {epoch + 1}/{self.epochs}",
                             bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, args=(self._stop,), daemon=True,
                                        name="fastmlp-progress")
        self._ticker.start()

    def batch(self, batch: int, logs: dict):
        """After batch `batch` (0-based) of the epoch: the bar moves to the samples trained so far."""
        if self.mode != "bar" or self._bar is None:
            return
        done = min((batch + 1) * self._batch_size, self.samples)
        with self._lock:
            self._bar.set_postfix_str(", ".join(f"{k}={_format_metric(v)}" for k, v in logs.items()), refresh=False)
            self._bar.update(done - self._bar.n)

    def _stop_ticker(self):
        if self._ticker is not None:
            self._stop.set()
            self._ticker.join()
            self._ticker = None

    def end(self, epoch: int, logs: dict, seconds: float):
        if self.mode == "silent":
            return
        if self.mode == "lines":
            self.stream.write(epoch_line(epoch, self.epochs, logs, seconds, self.samples) + "\n")
            self.stream.flush()
            return
        self._stop_ticker()
        if seconds > 0:  # next epoch: return to Python about every update_seconds
            self.batch_interval = max(1, min(self.steps, int(self.update_seconds * self.steps / seconds)))
        postfix = ", ".join([f"{k}={_format_metric(v)}" for k, v in logs.items()]
                            + [f"{_rate(self.samples, seconds):,.0f} samples/s"])
        with self._lock:
            if self._bar is not None:  # the batch hook has moved it to the samples trained
                self._bar.set_postfix_str(postfix, refresh=False)
                self._bar.close()
                self._bar = None

    def hook(self):
        """The callback fit adds in bar mode: it moves the bar every batch_interval batches."""
        return _BarUpdates(self)

    def close(self):
        self._stop_ticker()
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None


class _BarUpdates(Callback):
    """Batch hook of the live bar; its interval is the progress object's current one."""

    def __init__(self, progress: EpochProgress):
        super().__init__()
        self.progress = progress

    @property
    def batch_interval(self):
        return self.progress.batch_interval

    def on_train_batch_end(self, batch, logs=None):
        self.progress.batch(batch, logs or {})


__all__ = ["EpochProgress", "epoch_line"]
