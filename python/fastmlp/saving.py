"""One-file model saving: model.save("model.fm") and fm.load_model("model.fm").

The file is a zip archive holding two members:

    fastmlp.json   format tag and version, architecture (layer configs), compile config (optimizer
                   with its schedule, loss, metric, device, precision, dtype), seed, epochs seen,
                   optimizer step counter, training history
    arrays.npz     weights W0, b0, W1, b1, ... and the optimizer state (numpy .npz, no pickles)

Loading parses JSON and plain numeric arrays only (allow_pickle=False), so it never executes code.
A loaded model predicts bitwise identically and, with its optimizer state, step counter, seed
and epoch counter restored, continues training exactly as the original would have.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
import zlib

import numpy as np

FORMAT = "fastmlp.model"
FORMAT_VERSION = 1
_JSON = "fastmlp.json"
_ARRAYS = "arrays.npz"
_MAX_JSON_BYTES = 16 << 20


def _config(model) -> dict:
    from . import __version__

    cfg = {"format": FORMAT, "format_version": FORMAT_VERSION, "fastmlp_version": __version__,
           "model": {"class": "Sequential", "name": model.name, "seed": model.seed,
                     "epochs_seen": int(model._epochs_seen),
                     "layers": [layer.get_config() for layer in model.layers]},
           "compile": None, "built": model._engine is not None, "step": None, "state_slots": None,
           "history": None}
    args = model._compile_args
    if args is not None:
        cfg["compile"] = {"optimizer": args["optimizer"].get_config(), "loss": args["loss"].get_config(),
                          "metric": args["metric_key"], "device": args["device"],
                          "precision": args["precision"], "dtype": np.dtype(args["dtype"]).name}
    if model._engine is not None:
        cfg["step"] = int(model._engine.step)
        cfg["state_slots"] = int(model._engine.state_slots)
    hist = getattr(model, "history", None)
    if hist is not None and getattr(hist, "history", None):
        cfg["history"] = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    return cfg


def save_model(model, path) -> None:
    """Writes architecture, compile config, weights and optimizer state of `model` to one file."""
    from .models import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"save_model saves an fm.Sequential, got {type(model).__name__}")
    cfg = _config(model)
    arrays = {}
    if model._engine is not None:
        for i, w in enumerate(model.get_weights()):
            arrays[f"{'Wb'[i % 2]}{i // 2}"] = np.ascontiguousarray(w)
        arrays["optimizer_state"] = np.ascontiguousarray(model._engine.get_state())
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(_JSON, json.dumps(cfg, indent=1, allow_nan=False))
            zf.writestr(_ARRAYS, buf.getvalue())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ------------------------------------------------------------------------------------ loading
def _need(cond, path, msg):
    if not cond:
        raise ValueError(f"{path}: {msg}")


def _read(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not a fastmlp model file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: empty file, not a fastmlp model")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a fastmlp model file (not a zip archive; truncated or a different format)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            _need(_JSON in names, path, f"not a fastmlp model file (the archive has no {_JSON})")
            _need(zf.getinfo(_JSON).file_size <= _MAX_JSON_BYTES, path, f"{_JSON} is implausibly large")
            raw_json = zf.read(_JSON)
            raw_arrays = zf.read(_ARRAYS) if _ARRAYS in names else None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: corrupt model file ({e})") from None
    try:
        cfg = json.loads(raw_json.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt model file: {_JSON} is not valid JSON ({e})") from None
    _need(isinstance(cfg, dict) and cfg.get("format") == FORMAT, path,
          f"not a fastmlp model file ({_JSON} has no format tag {FORMAT!r})")
    version = cfg.get("format_version")
    _need(isinstance(version, int) and not isinstance(version, bool), path, "format_version missing")
    _need(version <= FORMAT_VERSION, path, f"written in model format version {version}; this fastmlp reads "
                                           f"up to version {FORMAT_VERSION} (upgrade fastmlp)")
    arrays = {}
    if raw_arrays is not None:
        try:
            with np.load(io.BytesIO(raw_arrays), allow_pickle=False) as npz:
                for key in npz.files:
                    arrays[key] = npz[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
            raise ValueError(f"{path}: corrupt model file: {_ARRAYS} could not be read ({e})") from None
    return cfg, arrays


def load_model(path, device=None, compile: bool = True):  # noqa: A002 - Keras' keyword name
    """Rebuilds a model saved with model.save(path): layers, compile config, weights, optimizer state.

    device: None uses the saved device (falling back to the CPU when a saved CUDA model is loaded
    where CUDA is unavailable); 'cpu', 'cuda', 'auto' override it. compile=False returns the
    model compiled with the saved config and weights, but a fresh optimizer state (step 0)."""
    from . import losses as _losses
    from . import optimizers as _optimizers
    from .callbacks import History
    from .layers import Dense
    from .models import Sequential, cuda_is_available

    path = os.fspath(path)
    cfg, arrays = _read(path)
    try:
        m = cfg["model"]
        _need(isinstance(m, dict) and m.get("class") == "Sequential", path, "model class must be Sequential")
        _need(isinstance(m["layers"], list) and m["layers"], path, "the model has no layers")
        layers = []
        for i, lc in enumerate(m["layers"]):
            _need(isinstance(lc, dict), path, f"layer {i} config is not an object")
            layers.append(Dense.from_config(lc))
        seed, epochs_seen = m["seed"], m["epochs_seen"]
        _need(isinstance(epochs_seen, int) and not isinstance(epochs_seen, bool) and epochs_seen >= 0, path,
              f"epochs_seen must be a non-negative integer, got {epochs_seen!r}")
        _need(isinstance(seed, int) and not isinstance(seed, bool), path, f"seed must be an integer, got {seed!r}")
        name = m.get("name")
        _need(name is None or isinstance(name, str), path, "model name must be a string")
        model = Sequential(layers, seed=seed, name=name)
        model._epochs_seen = epochs_seen
        c = cfg.get("compile")
        if c is None:
            _need(not arrays, path, "weights present but the model has no compile config")
            return model
        _need(isinstance(c, dict), path, "compile config is not an object")
        saved_device = c["device"]
        precision = c["precision"]
        if device is None:
            device = saved_device
            if str(device).startswith("cuda") and not cuda_is_available():
                device, precision = "cpu", "float32"
        elif device in ("cpu",) or (device == "auto" and not cuda_is_available()):
            precision = "float32"
        metric = c["metric"]
        _need(metric is None or isinstance(metric, str), path, f"bad metric {metric!r}")
        model.compile(optimizer=_optimizers.from_config(c["optimizer"]), loss=_losses.from_config(c["loss"]),
                      metrics=None if metric is None else [metric], device=device, precision=precision,
                      dtype=c["dtype"])
    except ValueError as e:
        if str(e).startswith(f"{path}:"):
            raise
        raise ValueError(f"{path}: invalid model config ({e})") from None
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{path}: invalid model config ({type(e).__name__}: {e})") from None

    if cfg.get("built"):
        shapes = model._layer_shapes()
        if model._engine is None:
            _need(None not in shapes[0], path, "the model is marked as built but its input_dim is unknown")
        weights = []
        for i, shape in enumerate(shapes):
            key = f"{'Wb'[i % 2]}{i // 2}"
            _need(key in arrays, path, f"weight array {key} is missing")
            w = arrays[key]
            _need(w.shape == tuple(shape), path, f"weight array {key} has shape {w.shape}, expected {tuple(shape)}")
            _need(w.dtype == model._dtype, path, f"weight array {key} has dtype {w.dtype}, expected {model._dtype}")
            _need(bool(np.isfinite(w).all()), path, f"weight array {key} contains NaN or Inf")
            weights.append(w)
        model.set_weights(weights)
        engine = model._engine
        step, slots = cfg.get("step"), cfg.get("state_slots")
        _need(isinstance(step, int) and not isinstance(step, bool) and step >= 0, path,
              f"optimizer step must be a non-negative integer, got {step!r}")
        _need(slots == engine.state_slots, path,
              f"optimizer state has {slots!r} slots per parameter, the optimizer uses {engine.state_slots}")
        if compile:
            state = arrays.get("optimizer_state")
            _need(state is not None, path, "optimizer_state array is missing")
            expected = engine.state_slots * engine.num_params
            _need(state.ndim == 1 and state.shape[0] == expected, path,
                  f"optimizer_state has shape {state.shape}, expected ({expected},)")
            _need(state.dtype == model._dtype, path, f"optimizer_state has dtype {state.dtype}, "
                                                     f"expected {model._dtype}")
            engine.set_state(state)
            engine.step = step
    elif arrays:
        raise ValueError(f"{path}: weights present but the model is marked as not built")

    hist = cfg.get("history")
    if isinstance(hist, dict):
        history = History()
        history.history = {str(k): [float(v) for v in vals] for k, vals in hist.items() if isinstance(vals, list)}
        model.history = history
    return model


__all__ = ["save_model", "load_model", "FORMAT", "FORMAT_VERSION"]
