"""Hyper-parameter search for fastmlp.Sequential: grid_search and random_search.

    import fastmlp as fm
    from fastmlp.model_selection import grid_search, LogUniform, random_search

    def build(units=64, lr=1e-3):
        m = fm.Sequential([fm.Dense(units, "relu", input_dim=20), fm.Dense(3, "softmax")], seed=0)
        m.compile(fm.optimizers.Adam(lr=lr), "sparse_categorical_crossentropy", metrics=["accuracy"])
        return m

    result = grid_search(build, x, y, validation_data=(xv, yv),
                         param_grid={"units": [32, 64], "lr": [1e-3, 1e-2], "batch_size": [32, 128]},
                         epochs=10, scoring="val_accuracy")
    print(result)            # ranked table
    result.best_params       # {'units': 64, 'lr': 0.01, 'batch_size': 32}
    result[0]["score"]       # the result is a list of dicts, best first

Each trial builds a fresh model with build_fn(**model_params) (a compiled fm.Sequential) and trains
it with model.fit(x, y, validation_data=..., epochs=..., batch_size=...). Parameters named like
fit arguments ("epochs", "batch_size", "shuffle") go to fit instead of build_fn. Without build_fn
a default MLP builder (build_mlp) is used, searching over hidden_layer_sizes, activation,
optimizer, learning_rate, l2, dropout (a Dropout of that rate after each hidden layer), seed.

Data residency: the arrays are validated and converted once, up front, and copied once into
backend memory (the GPU for CUDA models) as ResidentDatasets by the first trial's model; every
later trial on the same device, dtype and target layout trains and is evaluated on that same
memory, with no host-side conversion or host-to-device copy per trial. (A trial whose model
differs in one of those, e.g. another device, gets its own upload, shared in turn with its
kind.) Trials whose model cannot use the data (another input width, too few output classes)
fail with the error fit would have raised.

Parallel trials: n_jobs (None or 1: one after the other, here) runs the trials through joblib,
under its active backend: worker processes by default (n_jobs=-1: one per core), threads with
joblib.parallel_backend("threading"), or a cluster's with joblib.parallel_backend("dask")
(dask.distributed) or Ray's joblib backend. Each worker uploads the data once per search and
keeps it across its trials. A trial's result does not depend on where it ran (the builder's seed
fixes it); with keep_best the best model is trained again here from its parameters, since models do
not travel back from workers. build_fn, callbacks and a scoring callable must be picklable by
joblib (cloudpickle: lambdas and local functions are fine) for process and cluster backends.

Scoring: `scoring` is a validation log name ("val_loss", "val_accuracy", "val_mae"; "loss"
etc. mean the same), minimized or maximized per `mode` ("auto": accuracy-like names are
maximized); or a callable (model, x_val, y_val) -> float where higher is better. Trials whose
build or fit raises are recorded with score None and the error, ranked last (error="raise"
re-raises instead).
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
import numbers
import threading
import time
import uuid

import numpy as np

_FIT_KEYS = ("epochs", "batch_size", "shuffle")


class _SetupError(ValueError):
    """A mistake in the search set-up itself (build_fn, scoring): raised at once, never recorded."""


# ------------------------------------------------------------------------------ distributions
class Uniform:
    """Uniform floats in [low, high)."""

    def __init__(self, low, high):
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"Uniform needs finite low < high, got {low}, {high}")
        self.low, self.high = float(low), float(high)

    def rvs(self, random_state):
        return float(random_state.uniform(self.low, self.high))

    def __repr__(self):
        return f"{type(self).__name__}({self.low}, {self.high})"


class LogUniform(Uniform):
    """Floats whose logarithm is uniform in [log(low), log(high)): learning rates, penalties."""

    def __init__(self, low, high):
        if not (low > 0 and high > low):
            raise ValueError(f"LogUniform needs 0 < low < high, got {low}, {high}")
        super().__init__(low, high)

    def rvs(self, random_state):
        return float(math.exp(random_state.uniform(math.log(self.low), math.log(self.high))))


class IntUniform(Uniform):
    """Integers in [low, high] (inclusive)."""

    def __init__(self, low, high):
        if int(low) != low or int(high) != high or low > high:
            raise ValueError(f"IntUniform needs integers low <= high, got {low}, {high}")
        self.low, self.high = int(low), int(high)

    def rvs(self, random_state):
        return int(random_state.integers(self.low, self.high + 1))


# ------------------------------------------------------------------------------ default builder
def build_mlp(input_dim, n_outputs, *, output_activation, loss, metrics=None, hidden_layer_sizes=(64,),
              activation="relu", optimizer="adam", learning_rate=1e-3, l2=0.0, dropout=0.0, seed=0, device="auto"):
    """A compiled Sequential: Dense hidden layers (each followed by Dropout(dropout) when dropout > 0),
    then an output layer (used when build_fn is None)."""
    import fastmlp as fm

    if isinstance(hidden_layer_sizes, numbers.Integral):
        hidden_layer_sizes = (hidden_layer_sizes,)
    layers = fm.layers.mlp_stack(input_dim, hidden_layer_sizes, n_outputs, activation=activation,
                                 output_activation=output_activation,
                                 kernel_regularizer=fm.regularizers.L2(l2) if l2 else None, dropout=dropout)
    model = fm.Sequential(layers, seed=seed)
    opt = fm.optimizers.get(optimizer) if isinstance(optimizer, str) else optimizer
    opt = copy.deepcopy(opt)
    opt.lr = learning_rate
    model.compile(opt, loss, metrics=metrics, device=device)
    return model


def _default_builder(y, loss):
    """build_fn for build_mlp from the targets: classes -> softmax + sparse CE, floats -> mse."""
    y = np.asarray(y)
    if loss is None:
        if np.issubdtype(y.dtype, np.integer) and y.ndim == 1:
            loss = "sparse_categorical_crossentropy"
        else:
            loss = "mse"
    if loss == "sparse_categorical_crossentropy":
        n_out, out_act, metrics = int(y.max()) + 1, "softmax", ["accuracy"]
    elif loss == "mse":
        n_out, out_act, metrics = (1 if y.ndim == 1 else y.shape[1]), "linear", ["mae"]
    else:
        raise ValueError("without build_fn, loss must be 'sparse_categorical_crossentropy' or 'mse'; pass a build_fn "
                         "for other models")
    return n_out, out_act, loss, metrics


# ------------------------------------------------------------------------------ results
class SearchResult(list):
    """The trials as a list of dicts, best first. Each dict: rank, score, params, logs (the final
    validation logs), history (the History.history dict), epochs, seconds, error.
    best_params, best_score, best_model (when keep_best=True), table()."""

    def __init__(self, rows, scoring, mode, best_model=None):
        super().__init__(rows)
        self.scoring = scoring
        self.mode = mode
        self.best_model = best_model

    @property
    def best_params(self):
        return self[0]["params"] if self else None

    @property
    def best_score(self):
        return self[0]["score"] if self else None

    def table(self, max_rows=None) -> str:
        rows = self if max_rows is None else self[:max_rows]
        keys = []
        for r in rows:
            for k in r["params"]:
                if k not in keys:
                    keys.append(k)
        header = ["rank", str(self.scoring)] + keys + ["epochs", "seconds"]
        body = []
        for r in rows:
            score = "error" if r["score"] is None else f"{r['score']:.5g}"
            body.append([str(r["rank"]), score] + [_fmt(r["params"].get(k, "")) for k in keys]
                        + [str(r["epochs"]), f"{r['seconds']:.2f}"])
        widths = [max(len(x) for x in col) for col in zip(header, *body)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
        return "\n".join(lines)

    def __str__(self):
        return self.table()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ------------------------------------------------------------------------------ search core
def _check_grid(param_grid, what):
    if not isinstance(param_grid, dict) or not param_grid:
        raise ValueError(f"{what} must be a non-empty dict of parameter name -> values")
    for k, v in param_grid.items():
        if not isinstance(k, str):
            raise TypeError(f"{what} keys must be parameter names, got {k!r}")
        if isinstance(v, (str, bytes)) or not (hasattr(v, "rvs") or callable(v) or hasattr(v, "__iter__")):
            raise TypeError(f"{what}[{k!r}] must be a list of values" + (" or a distribution" if what ==
                            "param_distributions" else "") + f", got {v!r}")
        if hasattr(v, "__len__") and len(v) == 0:
            raise ValueError(f"{what}[{k!r}] is empty")


def _prepare(x, y, validation_data, build_fn, loss):
    """Validates and converts the data once; returns arrays every trial reuses and the builder."""
    from ._validation import as_features

    if validation_data is None or not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise ValueError("validation_data=(x_val, y_val) is required: trials are scored on the validation set")
    x32 = as_features(x, "x", None, np.float32)
    xv32 = as_features(validation_data[0], "validation x", x32.shape[1], np.float32)
    y_arr, yv_arr = np.asarray(y), np.asarray(validation_data[1])
    if len(y_arr) != len(x32):
        raise ValueError(f"x and y have different lengths: {len(x32)} vs {len(y_arr)}")
    if len(yv_arr) != len(xv32):
        raise ValueError(f"validation x and y have different lengths: {len(xv32)} vs {len(yv_arr)}")
    if build_fn is None:
        n_out, out_act, loss, metrics = _default_builder(np.concatenate([y_arr, yv_arr]), loss)

        def build_fn(**params):
            return build_mlp(x32.shape[1], n_out, output_activation=out_act, loss=loss, metrics=metrics, **params)
    elif not callable(build_fn):
        raise TypeError(f"build_fn must be a callable returning a compiled fm.Sequential, got {build_fn!r}")

    def targets(arr):  # class ids stay integral (the loss decides their layout); floats become float32
        if np.issubdtype(arr.dtype, np.floating):
            return np.ascontiguousarray(arr, dtype=np.float32)
        return np.ascontiguousarray(arr)

    return x32, targets(y_arr), xv32, targets(yv_arr), build_fn


def _n_jobs(n_jobs):
    if n_jobs is None:
        return None
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral) or n_jobs == 0:
        raise ValueError(f"n_jobs must be None, a positive integer or -1 (all cores), got {n_jobs!r}")
    return int(n_jobs)


def _resolve_scoring(scoring, mode):
    if callable(scoring):
        return scoring, "max"
    from .callbacks import _resolve_mode

    if not isinstance(scoring, str):
        raise TypeError(f"scoring must be a validation log name such as 'val_loss' or a callable, got {scoring!r}")
    key = scoring if scoring.startswith("val_") else "val_" + scoring
    return key, _resolve_mode(mode, key)


def _resident_data(model, cache, x, y, xv, yv):
    """The search's data in backend memory for this trial's model: uploaded by the first model of
    its kind (device, dtype, target layout) and reused by every later one."""
    loss = model.loss
    kind = (model._compile_args["device"], model._dtype.str, loss.takes_class_ids,
            None if loss.takes_class_ids else model.layers[-1].units)
    lock = getattr(cache, "lock", None)  # a worker's cache is shared by its threads
    with lock if lock is not None else contextlib.nullcontext():
        if kind not in cache:
            cache[kind] = (model.upload(x, y), model.upload(xv, yv))
        return cache[kind]


def _trial(build_fn, params, x, y, xv, yv, key, epochs, batch_size, callbacks, fit_kwargs, error, resident):
    """One trial: (its result row, its model or None)."""
    from .models import Sequential

    model_params = {k: v for k, v in params.items() if k not in _FIT_KEYS}
    fit_params = dict(epochs=epochs, batch_size=batch_size, verbose=0, **(fit_kwargs or {}))
    fit_params.update({k: v for k, v in params.items() if k in _FIT_KEYS})
    cbs = callbacks() if callable(callbacks) else copy.deepcopy(list(callbacks or []))
    row = {"params": dict(params), "score": None, "logs": {}, "history": {}, "epochs": 0, "seconds": 0.0,
           "error": None}
    started = time.perf_counter()
    try:
        model = build_fn(**model_params)
        if not isinstance(model, Sequential):
            raise _SetupError(f"build_fn must return an fm.Sequential, got {type(model).__name__}")
        if model.optimizer is None:
            raise _SetupError("build_fn must return a compiled model (call model.compile in build_fn)")
        train, val = _resident_data(model, resident, x, y, xv, yv)
        hist = model.fit(train, validation_data=val, callbacks=cbs, **fit_params)
        logs = {"val_" + k: v for k, v in model.evaluate(val).items()}
        if callable(key):
            score = float(key(model, xv, yv))
        else:
            if key not in logs:
                raise _SetupError(f"scoring {key!r} is not a validation log of this model; available: "
                                  f"{', '.join(sorted(logs))}")
            score = float(logs[key])
        row.update(score=score, logs=logs, history=dict(hist.history), epochs=len(hist.epoch))
    except _SetupError:
        raise
    except Exception as exc:
        if error == "raise":
            raise
        row["error"] = f"{type(exc).__name__}: {exc}"
        model = None
    row["seconds"] = time.perf_counter() - started
    return row, model


# A worker's uploads, kept across its trials of one search (the newest search only, so a
# long-lived joblib worker does not hoard old data): token -> resident cache.
_WORKER_UPLOADS: dict = {}
_WORKER_LOCK = threading.Lock()


def _worker_trial(token, build_fn, params, x, y, xv, yv, key, epochs, batch_size, callbacks, fit_kwargs, error):
    with _WORKER_LOCK:
        if token not in _WORKER_UPLOADS:
            _WORKER_UPLOADS.clear()
            _WORKER_UPLOADS[token] = _LockedCache()
        resident = _WORKER_UPLOADS[token]
    row, _ = _trial(build_fn, params, x, y, xv, yv, key, epochs, batch_size, callbacks, fit_kwargs, error, resident)
    return row


class _LockedCache(dict):
    """The resident-data cache shared by the threads of one worker (the threading backend)."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()


def _run(build_fn, trials, x, y, xv, yv, scoring, mode, epochs, batch_size, callbacks, fit_kwargs, keep_best,
         verbose, error, n_jobs=None):
    if error not in ("record", "raise"):
        raise ValueError(f"error must be 'record' or 'raise', got {error!r}")
    key, mode = _resolve_scoring(scoring, mode)
    rows, best_model, best_key = [], None, None
    resident = {}  # (device, dtype, target layout) -> (train, validation) ResidentDatasets
    args = (x, y, xv, yv, key, epochs, batch_size, callbacks, fit_kwargs, error)
    if n_jobs in (None, 1):
        results = ((_trial(build_fn, params, *args, resident)) for params in trials)
    else:
        # joblib runs the trials (its active backend: processes by default, or a cluster's with
        # joblib.parallel_backend("dask") / Ray's); each worker uploads the data once per search.
        import joblib

        token = uuid.uuid4().hex
        done = joblib.Parallel(n_jobs=n_jobs)(
            joblib.delayed(_worker_trial)(token, build_fn, params, *args) for params in trials)
        results = ((row, None) for row in done)
    for i, (row, model) in enumerate(results):
        params = trials[i]
        if verbose:
            s = "error: " + row["error"] if row["score"] is None else f"{row['score']:.5g}"
            print(f"[{i + 1}/{len(trials)}] {params} -> {s} ({row['seconds']:.2f}s)")
        if keep_best and row["score"] is not None and math.isfinite(row["score"]):
            k = row["score"] if mode == "max" else -row["score"]
            if best_key is None or k > best_key:
                best_key, best_model = k, (model if model is not None else params)
        rows.append(row)
    if keep_best and best_model is not None and not hasattr(best_model, "predict"):
        # Parallel trials return no models: the best one is trained again here from its
        # parameters (the builder's seed makes it the same model).
        best_model = _trial(build_fn, best_model, *args, resident)[1]

    def sort_key(r):
        s = r["score"]
        if s is None or not math.isfinite(s):
            return (1, 0.0)
        return (0, -s if mode == "max" else s)

    rows.sort(key=sort_key)  # stable: ties keep trial order
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    if rows and all(r["score"] is None for r in rows):
        raise RuntimeError(f"every trial failed; first error: {rows[0]['error']}")
    return SearchResult(rows, scoring if isinstance(scoring, str) else getattr(scoring, "__name__", "score"), mode,
                        best_model)


def grid_search(build_fn, x, y, validation_data, param_grid, *, epochs=10, batch_size=32, scoring="val_loss",
                mode="auto", callbacks=None, fit_kwargs=None, keep_best=False, loss=None, verbose=0,
                error="record", n_jobs=None):
    """Trains one model per combination of param_grid (dict of name -> list of values) and ranks
    them by their validation score. Returns a SearchResult (list of dicts, best first)."""
    _check_grid(param_grid, "param_grid")
    for k, v in param_grid.items():
        if hasattr(v, "rvs") or not hasattr(v, "__iter__"):
            raise TypeError(f"param_grid[{k!r}] must be a list of values (distributions go to random_search)")
    x, y, xv, yv, build_fn = _prepare(x, y, validation_data, build_fn, loss)
    names = list(param_grid)
    trials = [dict(zip(names, combo)) for combo in itertools.product(*(list(param_grid[k]) for k in names))]
    return _run(build_fn, trials, x, y, xv, yv, scoring, mode, epochs, batch_size, callbacks, fit_kwargs, keep_best,
                verbose, error, _n_jobs(n_jobs))


def random_search(build_fn, x, y, validation_data, param_distributions, *, n_iter=10, seed=None, epochs=10,
                  batch_size=32, scoring="val_loss", mode="auto", callbacks=None, fit_kwargs=None, keep_best=False,
                  loss=None, verbose=0, error="record", n_jobs=None):
    """Trains n_iter models with parameters drawn from param_distributions: each value is a list
    (uniform choice), an object with .rvs(random_state) (Uniform, LogUniform, IntUniform, scipy.stats
    distributions) or a callable rng -> value. When every value is a list, combinations are drawn
    without repetition (at most the grid size). seed makes the draw reproducible."""
    _check_grid(param_distributions, "param_distributions")
    if isinstance(n_iter, bool) or not isinstance(n_iter, numbers.Integral) or n_iter < 1:
        raise ValueError(f"n_iter must be a positive integer, got {n_iter!r}")
    x, y, xv, yv, build_fn = _prepare(x, y, validation_data, build_fn, loss)
    rng = np.random.default_rng(seed)
    names = list(param_distributions)
    dists = param_distributions
    if all(not hasattr(v, "rvs") and not callable(v) for v in dists.values()):
        grid = [dict(zip(names, c)) for c in itertools.product(*(list(dists[k]) for k in names))]
        pick = rng.permutation(len(grid))[:n_iter]
        trials = [grid[i] for i in pick]
    else:
        trials = []
        for _ in range(n_iter):
            t = {}
            for k in names:
                v = dists[k]
                if hasattr(v, "rvs"):
                    try:
                        t[k] = v.rvs(random_state=rng)
                    except TypeError:
                        t[k] = v.rvs(random_state=np.random.RandomState(int(rng.integers(2 ** 31))))
                elif callable(v):
                    t[k] = v(rng)
                else:
                    vals = list(v)
                    t[k] = vals[int(rng.integers(len(vals)))]
                if isinstance(t[k], np.generic):
                    t[k] = t[k].item()
            trials.append(t)
    return _run(build_fn, trials, x, y, xv, yv, scoring, mode, epochs, batch_size, callbacks, fit_kwargs, keep_best,
                verbose, error, _n_jobs(n_jobs))


__all__ = ["grid_search", "random_search", "build_mlp", "SearchResult", "Uniform", "LogUniform", "IntUniform"]
