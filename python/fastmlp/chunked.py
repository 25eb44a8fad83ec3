"""Data that does not fit in one array: fit, evaluate and predict over a source of chunks.

A chunk source is anything that yields chunks and is not itself an array: a generator or other
iterator, a Keras-style Sequence (__len__ and __getitem__(i) -> chunk i, on_epoch_end() called
after each epoch if it has one), or a re-iterable such as a torch.utils.data.DataLoader. A chunk is
a tuple or list (x, y) or (x, y, sample_weight) for fit and evaluate, and x (an array) or (x, ...)
for predict (a chunk that is a tuple or list of 1 to 3 items is read as those items); each
is validated, uploaded and trained natively (fit splits a chunk into batches of batch_size, one
batch per chunk when batch_size is None, as Keras takes each yielded batch as one step).

steps (fit's steps_per_epoch, evaluate's and predict's steps): chunks per epoch. Without it an
epoch is one pass: len(sequence) chunks, or one full iteration of the source. A plain iterator is
used up by one pass, so fitting one for several epochs needs steps_per_epoch (and enough data);
it then continues where the previous epoch stopped, as in Keras.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import _core
from ._interop import device_array
from .resident import ResidentDataset


def is_chunk_source(x) -> bool:
    """True for generators, iterators, Sequences and DataLoaders; False for anything array-like."""
    if x is None or isinstance(x, (np.ndarray, list, tuple, dict, str, bytes, ResidentDataset)):
        return False
    if hasattr(x, "__array__") or hasattr(x, "__array_interface__") or device_array(x) is not None:
        return False  # NumPy-like arrays, pandas frames, CPU and GPU tensors
    return hasattr(x, "__next__") or hasattr(x, "__iter__") or (hasattr(x, "__getitem__") and hasattr(x, "__len__"))


def check_steps(steps, name):
    if steps is None:
        return None
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {steps!r}")
    return int(steps)


class ChunkSource:
    """The chunks of each epoch of one source."""

    def __init__(self, source, steps, what):
        self.source, self.steps, self.what = source, steps, what
        self.is_sequence = hasattr(source, "__getitem__") and hasattr(source, "__len__") and \
            not hasattr(source, "__next__")
        self.is_iterator = hasattr(source, "__next__")
        self._used_up = False

    def __len__(self):
        """Chunks per epoch, when known."""
        if self.steps is not None:
            return self.steps
        if self.is_sequence or hasattr(self.source, "__len__"):
            return len(self.source)
        raise TypeError("unknown")

    def epoch(self):
        if self.is_sequence:
            n = len(self.source) if self.steps is None else self.steps
            if len(self.source) == 0:
                raise ValueError(f"the {self.what} Sequence has no chunks (len 0)")
            for i in range(n):
                yield self.source[i % len(self.source)]
            end = getattr(self.source, "on_epoch_end", None)
            if callable(end):
                end()
            return
        if self.is_iterator and self._used_up and self.steps is None:
            raise ValueError(f"the {self.what} iterator was used up by the previous epoch: pass steps_per_epoch (and "
                             "an iterator that yields enough chunks), or a re-iterable source such as a Sequence or "
                             "a DataLoader")
        it = self.source if self.is_iterator else iter(self.source)
        taken = 0
        while self.steps is None or taken < self.steps:
            try:
                chunk = next(it)
            except StopIteration:
                if self.steps is not None:
                    raise ValueError(f"the {self.what} source ran out after {taken} of steps={self.steps} chunks") \
                        from None
                self._used_up = self.is_iterator
                return
            taken += 1
            yield chunk


def unpack(chunk, what, need_y: bool):
    """(x, y, sample_weight) of one chunk; y and the weights None where absent."""
    if isinstance(chunk, dict):
        raise TypeError(f"a {what} chunk must be a tuple (x, y) or (x, y, sample_weight), got a dict")
    if isinstance(chunk, (tuple, list)) and len(chunk) in (1, 2, 3):  # DataLoaders yield lists [x, y]
        x = chunk[0]
        y = chunk[1] if len(chunk) > 1 else None
        w = chunk[2] if len(chunk) > 2 else None
    else:
        x, y, w = chunk, None, None
    x, y, w = (_host(v) for v in (x, y, w))
    if need_y and y is None:
        raise ValueError(f"a {what} chunk has no targets: each chunk must be a tuple (x, y) or (x, y, sample_weight) "
                         "(a data source carries its own targets: leave fit's y out)")
    return x, y, w


def _host(v):
    """CPU tensors and the like as NumPy; GPU arrays pass through (a CUDA model uses them)."""
    if v is None or isinstance(v, np.ndarray) or device_array(v) is not None:
        return v
    detach = getattr(v, "detach", None)  # a torch CPU tensor: no copy through __array__ warnings
    if callable(detach):
        v = detach()
    return np.asarray(v)


def train_epoch(model, chunks: ChunkSource, batch_size, seed):
    """One epoch over the chunks: each uploaded and trained natively. Returns fit's epoch result
    (means over all rows of the epoch)."""
    sums = _Sums()
    for i, chunk in enumerate(chunks.epoch()):
        x, y, w = unpack(chunk, "training", need_y=True)
        data, n = model._data(x, y, sample_weight=w)
        if n == 0:
            continue
        chunk_seed = None if seed is None else _core.derive_seed(seed, i)
        r = model._engine.train_epoch(data, chunk_seed, n if batch_size is None else batch_size)
        if r["nonfinite"]:
            return {"loss": float("nan"), "metric": float("nan"), "nonfinite": True, "rows": sums.rows + n}
        sums.add(r, n)
    return sums.result("the training source yielded no rows this epoch")


class _Sums:
    """The per-chunk results of an epoch or evaluation, weighted by their rows (the further
    metrics' slots are sums already: added)."""

    def __init__(self):
        self.rows, self.loss, self.metric, self.nonfinite, self.slots = 0, 0.0, 0.0, False, None

    def add(self, r, n):
        self.loss += r["loss"] * n
        self.metric += r["metric"] * n
        self.rows += n
        self.nonfinite = self.nonfinite or r["nonfinite"]
        s = r.get("metric_slots")
        if s is not None:
            s = np.asarray(s, dtype=np.float64)
            self.slots = s if self.slots is None else self.slots + s

    def result(self, empty_message):
        if self.rows == 0:
            raise ValueError(empty_message)
        return {"loss": self.loss / self.rows, "metric": self.metric / self.rows, "nonfinite": self.nonfinite,
                "rows": self.rows, "metric_slots": self.slots}


def evaluate(model, chunks: ChunkSource, batch_size):
    sums = _Sums()
    for chunk in chunks.epoch():
        x, y, w = unpack(chunk, "evaluation", need_y=True)
        data, n = model._data(x, y, sample_weight=w)
        if n:
            sums.add(model._engine.evaluate(data, batch_size), n)  # the engine is built by the first chunk
    return sums.result("the evaluation source yielded no rows")


def predict(model, chunks: ChunkSource, batch_size):
    outs = []
    for chunk in chunks.epoch():
        x, _, _ = unpack(chunk, "prediction", need_y=False)
        data, n = model._data(x)
        if n:
            outs.append(model._engine.predict(data, batch_size))
    if not outs:
        raise ValueError("the prediction source yielded no rows")
    return np.concatenate(outs)
