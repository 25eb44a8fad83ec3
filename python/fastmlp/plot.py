"""Plots (needs matplotlib): training curves, 2-D decision boundaries, confusion matrices.

    fm.plot.history(model.history, path="curves.png")
    fm.plot.decision_boundary(model, x, y, path="boundary.png")
    fm.plot.confusion_matrix(y_test, model, x=x_test, path="confusion.png")

Each function returns the matplotlib Figure and also saves it to `path` when one is given.
On a machine without a display the non-interactive Agg backend is selected automatically.
"""
from __future__ import annotations

import os
import sys

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("fastmlp.plot needs matplotlib: pip install matplotlib "
                          "(or pip install 'fastmlp[plot]')") from None
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                              or os.environ.get("WAYLAND_DISPLAY"))
        if headless:
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, path, dpi=100):
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi)
    return fig


def _class_ids(y, name):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return y.argmax(axis=1)
    if y.ndim == 2:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{name} must be class ids (n,) or one-hot/probability rows (n, k), got shape {y.shape}")
    if np.issubdtype(y.dtype, np.floating) and y.size and not np.all(y == np.round(y)):
        return (y > 0.5).astype(np.int64)  # sigmoid outputs
    return y.astype(np.int64)


# ------------------------------------------------------------------------------------ history
def history(history, metrics=None, path=None, ax=None):
    """Training vs validation curves, one panel per metric (default: loss and the compiled metric).

    history: a History (model.fit's return value), its .history dict, or a model that was fit.
    ax: an Axes (all metrics drawn on it) or one Axes per metric."""
    hist = getattr(history, "history", history)
    hist = getattr(hist, "history", hist)  # a model -> its History -> the dict
    if not isinstance(hist, dict) or not hist:
        raise ValueError("history must be a non-empty History, history dict or a fitted model")
    if metrics is None:
        metrics = [k for k in hist if not k.startswith("val_")]
    elif isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(metrics)
    for m in metrics:
        if m not in hist:
            raise ValueError(f"no {m!r} in the history; it has: {', '.join(hist)}")
    plt = _pyplot()
    if ax is None:
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
        axes = list(axes[0])
    elif isinstance(ax, (list, tuple, np.ndarray)):
        axes = list(np.ravel(ax))
        if len(axes) != len(metrics):
            raise ValueError(f"got {len(axes)} axes for {len(metrics)} metrics")
        fig = axes[0].figure
    else:
        axes, fig = [ax] * len(metrics), ax.figure
    for a, m in zip(axes, metrics):
        epochs = np.arange(1, len(hist[m]) + 1)
        a.plot(epochs, hist[m], marker="o", markersize=3, label=f"train {m}")
        if f"val_{m}" in hist:
            a.plot(np.arange(1, len(hist[f"val_{m}"]) + 1), hist[f"val_{m}"], marker="o", markersize=3,
                   label=f"validation {m}")
        a.set_xlabel("epoch")
        a.set_ylabel(m if len(set(map(id, axes))) > 1 else "value")
        a.grid(True, alpha=0.3)
        a.legend()
    if ax is None:
        fig.tight_layout()
    return _finish(fig, path)


# ---------------------------------------------------------------------------- decision boundary
def decision_boundary(model, x, y, path=None, resolution=200, ax=None, margin=0.5):
    """Predicted class over the plane of a 2-feature model, with the samples (x, y) on top."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"decision_boundary needs 2-D inputs: x of shape (n, 2), got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("decision_boundary needs at least one sample")
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}")
    labels = _class_ids(y, "y")
    if labels.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {labels.shape[0]}")
    lo, hi = x.min(axis=0) - margin, x.max(axis=0) + margin
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution))
    grid = np.column_stack([gx.ravel(), gy.ravel()]).astype(np.float32)
    out = np.asarray(model.predict(grid))
    zz = (out.argmax(axis=1) if out.ndim == 2 and out.shape[1] > 1 else (out.ravel() > 0.5)).reshape(gx.shape)
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 5))
    else:
        fig = ax.figure
    n_classes = int(max(zz.max(), labels.max() if labels.size else 0)) + 1
    cmap = plt.get_cmap("tab10" if n_classes <= 10 else "tab20")
    levels = np.arange(n_classes + 1) - 0.5
    ax.contourf(gx, gy, zz, levels=levels, cmap=cmap, vmin=-0.5, vmax=cmap.N - 0.5, alpha=0.35)
    ax.scatter(x[:, 0], x[:, 1], c=labels, cmap=cmap, vmin=-0.5, vmax=cmap.N - 0.5, s=14, edgecolors="k",
               linewidths=0.4)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_xlabel("x[:, 0]")
    ax.set_ylabel("x[:, 1]")
    ax.set_title("decision boundary")
    return _finish(fig, path)


# ----------------------------------------------------------------------------- confusion matrix
def _confusion_counts(y_true, y_pred, num_classes=None) -> np.ndarray:
    t, p = _class_ids(y_true, "y_true"), _class_ids(y_pred, "y_pred")
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"y_true has {t.shape[0]} samples but y_pred has {p.shape[0]}")
    if t.size and min(t.min(), p.min()) < 0:
        raise ValueError("class ids must be >= 0")
    k = int(max(t.max(), p.max()) + 1) if t.size else 0
    if num_classes is not None:
        if k > num_classes:
            raise ValueError(f"class id {k - 1} does not fit the {num_classes} labels given")
        k = num_classes
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (t, p), 1)
    return counts


def confusion_matrix(y_true, y_pred=None, path=None, labels=None, *, x=None, normalize=False, ax=None):
    """Counts of true class (rows) vs predicted class (columns).

    y_pred: predicted class ids, probability rows (argmax is taken), or a model, with x= its inputs.
    labels: names for the classes. normalize=True shows each row as fractions of the true class."""
    if hasattr(y_pred, "predict"):
        if x is None:
            raise ValueError("confusion_matrix with a model needs its inputs: confusion_matrix(y, model, x=x)")
        y_pred = y_pred.predict(x)
    elif y_pred is None:
        raise ValueError("confusion_matrix needs y_pred (class ids or probabilities) or a model with x=")
    counts = _confusion_counts(y_true, y_pred, None if labels is None else len(labels))
    k = counts.shape[0]
    names = [str(v) for v in (labels if labels is not None else range(k))]
    values = counts.astype(np.float64)
    if normalize:
        values = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
    plt = _pyplot()
    if ax is None:
        size = max(4.0, 0.5 * k + 2)
        fig, ax = plt.subplots(figsize=(size + 1, size))
    else:
        fig = ax.figure
    im = ax.imshow(values, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=45 if max(map(len, names), default=0) > 3 else 0)
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"confusion matrix (accuracy {acc:.2%})")
    if k <= 30:
        top = values.max() if values.size else 0
        for i in range(k):
            for j in range(k):
                text = f"{values[i, j]:.2f}" if normalize else str(counts[i, j])
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if top and values[i, j] > top / 2 else "black")
    fig.tight_layout()
    return _finish(fig, path)


__all__ = ["history", "decision_boundary", "confusion_matrix"]
