"""Per-epoch progress output for fit: verbose=0 silent, 1 a line per epoch (refreshed in place
on a terminal), 2 one plain line per epoch."""
from __future__ import annotations

import sys


class EpochProgress:
    def __init__(self, verbose: int, epochs: int, samples: int, stream=None):
        self.verbose = verbose
        self.epochs = epochs
        self.samples = samples
        self.stream = stream or sys.stdout

    def begin(self, epoch: int):
        pass

    def end(self, epoch: int, logs: dict, seconds: float):
        if not self.verbose:
            return
        rate = self.samples / seconds if seconds > 0 else float("inf")
        metrics = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
        self.stream.write(f"Epoch {epoch + 1}/{self.epochs} - {seconds:.2f}s - {rate:,.0f} samples/s - {metrics}\n")
        self.stream.flush()

    def close(self):
        pass
