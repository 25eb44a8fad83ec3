"""Per-epoch progress output for fit.

verbose=0  silent.
verbose=1  on a terminal: one live tqdm progress bar over the epochs. The native loop returns to
           Python once per epoch, so the bar advances per epoch and shows that epoch's metrics
           (loss, accuracy, val_*) and samples/s in its postfix; while an epoch runs the native
           loop releases the GIL and a small thread refreshes the bar's elapsed time.
           When the stream is not a terminal (a log file, a pipe, CI), or tqdm is not installed,
           verbose=1 prints the same plain lines as verbose=2.
verbose=2  one plain line per epoch:
           "Epoch 3/10 - 0.12s - 51,234 samples/s - loss: 0.4120 - accuracy: 0.8750"

Plain lines never contain carriage returns or ANSI control sequences, so logs stay readable.
"""
from __future__ import annotations

import sys
import threading


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


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
    close() when training ends (also on errors). `mode` is 'silent', 'bar' or 'lines'."""

    refresh_seconds = 0.5

    def __init__(self, verbose: int, epochs: int, samples: int, stream=None):
        self.verbose = int(verbose)
        self.epochs = int(epochs)
        self.samples = int(samples)
        self.stream = stream if stream is not None else sys.stdout
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
    def _open_bar(self, epoch: int):
        tqdm = self._tqdm()
        self._bar = tqdm(total=self.epochs, initial=epoch, file=self.stream, unit="epoch", dynamic_ncols=True,
                         leave=True, desc=f"Epoch {epoch + 1}/{self.epochs}")

    def _tick(self, stop: threading.Event):
        while not stop.wait(self.refresh_seconds):
            with self._lock:
                if self._bar is not None:
                    self._bar.refresh()

    def begin(self, epoch: int):
        if self.mode != "bar":
            return
        with self._lock:
            if self._bar is None:
                self._open_bar(epoch)
            self._bar.set_description_str(f"Epoch {epoch + 1}/{self.epochs}", refresh=True)
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, args=(self._stop,), daemon=True,
                                        name="fastmlp-progress")
        self._ticker.start()

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
        postfix = ", ".join([f"{k}={_format_metric(v)}" for k, v in logs.items()]
                            + [f"{_rate(self.samples, seconds):,.0f} samples/s"])
        with self._lock:
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(1)

    def close(self):
        self._stop_ticker()
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None


__all__ = ["EpochProgress", "epoch_line"]
