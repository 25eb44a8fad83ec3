"""Metrics: compile(metrics=[...]) takes names or these objects, accumulated natively next to the
loss (no per-batch Python), reported in fit's history, evaluate, callbacks and the CSV log.

    accuracy                           argmax = label (one-hot/soft targets: argmax of the target);
                                       binary outputs (binary_crossentropy, one unit): each output
                                       thresholded at 0.5 against target > 0.5, averaged
    binary_accuracy                    the same, named as Keras's BinaryAccuracy
    top_k_categorical_accuracy (k=5)   the label is among the k largest outputs (fewer than k
    sparse_top_k_categorical_accuracy  outputs strictly larger than the label's)
    mae, mse                           mean over outputs of |a - y| and (a - y)^2 (class ids as one-hot)
    precision, recall                  over every output element, predicted positive when the
                                       score > 0.5, actually positive when the target > 0.5:
                                       TP / (TP + FP) and TP / (TP + FN) (0 when the denominator is 0)
    auc                                ROC AUC as Keras's AUC(num_thresholds=200) computes it: the
                                       confusion counts at thresholds -1e-7, 1/199, ..., 198/199,
                                       1 + 1e-7 and the trapezoid rule over them

Scores are probabilities for cross-entropy losses (softmax or sigmoid of the logits, so from_logits
models score the same) and the output layer's activation otherwise. Where the scores rise strictly
with the logits (cross-entropies, softmax, sigmoid and linear outputs), accuracy and top-k rank the
logits themselves: classes whose probabilities round to the same float (0 far below the maximum)
still rank as the exact probabilities would, where Keras's in_top_k counts such ties as hits. Metrics are not weighted by
sample_weight. A model with a single metric accuracy, binary_accuracy or mae keeps the engine's
original fused metric (the same values); any other list goes through the slots below.
"""
from __future__ import annotations

import copy

import numpy as np

from . import _core
from ._enums import FURTHER_METRIC_IDS as _KINDS

# The core's sizes (csrc/fastmlp/types.h).
AUC_BINS = _core.AUC_BINS
MAX_METRICS = _core.MAX_METRICS
MAX_SLOTS = _core.MAX_METRIC_SLOTS


class Metric:
    """A metric: `name` is its key in the logs; `kind` and `param` what the engine computes."""

    name = "accuracy"
    kind = "accuracy"
    param = 0

    @property
    def slots(self) -> int:
        return _core.metric_slot_count(_KINDS[self.kind])

    def get_config(self) -> dict:
        return {"class": type(self).__name__, "name": self.name}

    def __repr__(self):
        return f"{type(self).__name__}()"


class Accuracy(Metric):
    name = kind = "accuracy"


class BinaryAccuracy(Metric):
    name, kind = "binary_accuracy", "accuracy"


class MeanAbsoluteError(Metric):
    name = kind = "mae"


class MeanSquaredError(Metric):
    name = kind = "mse"


class Precision(Metric):
    name = kind = "precision"


class Recall(Metric):
    name = kind = "recall"


class AUC(Metric):
    name = kind = "auc"


class TopKCategoricalAccuracy(Metric):
    name, kind = "top_k_categorical_accuracy", "top_k"

    def __init__(self, k: int = 5, name: str | None = None):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.param = int(k)
        if name is not None:
            self.name = str(name)

    def get_config(self) -> dict:
        return {**super().get_config(), "k": self.param}

    @classmethod
    def _from(cls, config):
        return cls(config.get("k", 5), name=config.get("name"))

    def __repr__(self):
        return f"{type(self).__name__}(k={self.param})"


class SparseTopKCategoricalAccuracy(TopKCategoricalAccuracy):
    name = "sparse_top_k_categorical_accuracy"


_BY_NAME = {"accuracy": Accuracy, "acc": Accuracy, "binary_accuracy": BinaryAccuracy,
            "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
            "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
            "precision": Precision, "recall": Recall, "auc": AUC,
            "top_k_categorical_accuracy": TopKCategoricalAccuracy,
            "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy}
_CLASSES = {c.__name__: c for c in set(_BY_NAME.values())}


def get(identifier) -> Metric:
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower())
        if cls is None:
            raise ValueError(f"unknown metric {identifier!r}; choose one of {', '.join(sorted(_BY_NAME))} or an "
                             "fm.metrics object")
        return cls()
    raise TypeError(f"metrics must be names such as 'accuracy' or fm.metrics objects, got {identifier!r}")


def from_config(config: dict) -> Metric:
    cls = _CLASSES.get(config.get("class")) if isinstance(config, dict) else None
    if cls is None:
        raise ValueError(f"unknown metric config {config!r}")
    if issubclass(cls, TopKCategoricalAccuracy):
        return cls._from(config)
    m = cls()
    if isinstance(config.get("name"), str):
        m.name = config["name"]
    return m


_CLASSIFICATION = ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy",
                   "multiclass_hinge")


def plan(metrics, loss, n_out) -> list:
    """[(metric, first slot)] for the engine, checked against the loss and the output width."""
    out, slot, keys = [], 0, set()
    for m in metrics:
        m = get(m)
        if m.kind in ("accuracy", "top_k", "precision", "recall", "auc") and loss.name not in _CLASSIFICATION:
            raise ValueError(f"{m.name} needs a classification loss, not {loss.name}")
        if m.name in keys:  # Keras's way: a second metric of one name gets _1, _2, ...
            i = 1
            while f"{m.name}_{i}" in keys:
                i += 1
            m = copy.copy(m)
            m.name = f"{m.name}_{i}"
        keys.add(m.name)
        out.append((m, slot))
        slot += m.slots
    if len(out) > MAX_METRICS:
        raise ValueError(f"at most {MAX_METRICS} metrics, got {len(out)}")
    if slot > MAX_SLOTS:
        raise ValueError("too many metrics: at most one auc with six others")
    return out


def native(planned) -> list:
    return [(_KINDS[m.kind], m.param, slot) for m, slot in planned]


def values(planned, slots, rows: int, prefix: str = "") -> dict:
    """The metrics' values from the engine's sums over `rows` rows."""
    s = np.asarray(slots, dtype=np.float64)
    out = {}
    for m, i in planned:
        if m.kind in ("accuracy", "top_k", "mae", "mse"):
            v = s[i] / rows if rows else 0.0
        elif m.kind in ("precision", "recall"):
            v = s[i] / s[i + 1] if s[i + 1] > 0 else 0.0
        else:
            v = auc_from_histograms(s[i:i + AUC_BINS], s[i + AUC_BINS:i + 2 * AUC_BINS])
        out[prefix + m.name] = float(v)
    return out


def auc_from_histograms(pos, neg) -> float:
    """Keras's ROC AUC from the counts of positive and negative scores per threshold bin (bin i:
    the largest threshold below the score is threshold i)."""
    tp = np.cumsum(pos[::-1])[::-1]  # scores above threshold i
    fp = np.cumsum(neg[::-1])[::-1]
    p, n = tp[0], fp[0]
    if p == 0 or n == 0:
        return 0.0
    tpr, fpr = tp / p, fp / n
    return float(np.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2.0))


__all__ = ["Metric", "Accuracy", "BinaryAccuracy", "MeanAbsoluteError", "MeanSquaredError", "Precision", "Recall",
           "AUC", "TopKCategoricalAccuracy", "SparseTopKCategoricalAccuracy", "get"]
