"""One-file model saving: model.save("model.fm") and fm.load_model("model.fm").

The file is a zip archive holding two members:

    fastmlp.json   format tag and version, architecture (layer configs), compile config (optimizer
                   with its schedule, loss, metric, device, precision, dtype), seed, epochs seen,
                   optimizer step counter, training history
    arrays.npz     the weights, one array each in get_weights() order, and the optimizer state
                   (numpy .npz, no pickles). An array is named after its layer's index: a Dense
                   layer L holds W{L} (kernel) and b{L} (bias); any other layer its weight
                   names, e.g. BatchNormalization at index 1: gamma1, beta1, moving_mean1,
                   moving_variance1 (LayerNormalization: gamma1, beta1; Dropout and Activation
                   have none). The flat array optimizer_state holds every slot.

Format version 1 knows Dense layers only (a layer config without "class" is a Dense); a model
with any other layer is written as version 2, which older fastmlp refuses with "upgrade
fastmlp". Dense-only models are still written as version 1, so older fastmlp reads them, and
every version-1 file loads here.

Loading parses JSON and plain numeric arrays only (no pickles), so it never executes code. Every
size the file declares (zip members, npy headers) is checked against the architecture in
fastmlp.json before anything is read or allocated, unknown members are rejected, the arrays are
streamed into place, and the optimizer state must be finite (squared-gradient slots >= 0): a
hostile or broken file is a ValueError naming it, and memory stays near the model's own size.
Saving writes a temporary (a nameless O_TMPFILE on Linux, else an unpredictable name created
exclusively) in the target folder and renames it onto the path: no symlink is followed, and an
interrupted or killed save leaves the old file and no temporaries.
A loaded model predicts bitwise identically and, with its optimizer state, step counter, seed
and epoch counter restored, continues training exactly as the original would have.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import stat
import struct
import zipfile
import zlib

import numpy as np

from . import _core
from . import layers as _layers
from .layers import Dense
from . import losses as _losses
from . import metrics as _metrics
from . import optimizers as _optimizers
from ._atomic_write import write_atomic
from .callbacks import History
from .models import Sequential, cuda_is_available

FORMAT = "fastmlp.model"
FORMAT_VERSION = 2  # the newest version this fastmlp reads and writes (see the module doc)
_JSON = "fastmlp.json"
_ARRAYS = "arrays.npz"
_MAX_JSON_BYTES = 16 << 20


def _array_layout(model) -> list:
    """(npz name, shape) of each weight of a built model, in get_weights() order, from the layer
    classes' weight_shapes and output_dim: Dense layer L gives W{L}, b{L} (format 1's names), any
    other layer its weight_names() followed by L (gamma1, moving_mean1, ...)."""

    out, fan_in = [], model.input_dim
    for index, layer in enumerate(model.layers):
        shapes = layer.weight_shapes(fan_in)
        names = ["W", "b"] if isinstance(layer, Dense) else layer.weight_names()
        if len(names) != len(shapes):  # a layer class that names fewer weights than it has
            raise ValueError(f"layer {index} ({type(layer).__name__}) names {len(names)} weights but has {len(shapes)}")
        out += [(f"{name}{index}", tuple(shape)) for name, shape in zip(names, shapes)]
        fan_in = layer.output_dim(fan_in)
    return out


def _config(model, engine, step) -> dict:
    from . import __version__

    version = 1 if all(isinstance(layer, Dense) for layer in model.layers) else FORMAT_VERSION
    cfg = {"format": FORMAT, "format_version": version, "fastmlp_version": __version__,
           "model": {"class": "Sequential", "name": model.name, "seed": model.seed,
                     "epochs_seen": int(model._epochs_seen),
                     "layers": [layer.get_config() for layer in model.layers]},
           "compile": None, "built": engine is not None, "step": None, "state_slots": None,
           "history": None}
    args = model._compile_args
    if args is not None:
        cfg["compile"] = {"optimizer": args["optimizer"].get_config(), "loss": args["loss"].get_config(),
                          "metric": args["metric_key"], "device": args["device"],
                          **({"metrics": [m.get_config() for m, _ in args["further_metrics"]]}
                             if args.get("further_metrics") else {}),
                          "precision": args["precision"], "dtype": np.dtype(args["dtype"]).name}
    if engine is not None:
        cfg["step"] = int(step)
        cfg["state_slots"] = int(engine.state_slots)
    hist = getattr(model, "history", None)
    if hist is not None and getattr(hist, "history", None):
        cfg["history"] = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    return cfg


def save_model(model, path) -> None:
    """Writes architecture, compile config, weights and optimizer state of `model` to one file.

    The file appears at `path` complete or not at all (an atomic replace of any old file there),
    with the permissions open() would give it; no symlink is followed and nothing is left behind
    when saving fails (see fastmlp._atomic_write)."""

    if not isinstance(model, Sequential):
        raise TypeError(f"save_model saves an fm.Sequential, got {type(model).__name__}")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"the model path must be a str or os.PathLike, got {type(path).__name__}")
    if not path or path.endswith(os.sep) or os.path.isdir(path):
        raise IsADirectoryError(f"cannot save the model to {path!r}: it names a directory, not a file")
    engine, arrays, step = model._engine, {}, None
    if engine is not None:
        # Weights, state and step of one step boundary, even while another thread trains.
        params, state, step = engine.get_snapshot()
        for (key, _), w in zip(_array_layout(model), model._unflatten(params)):
            arrays[key] = np.ascontiguousarray(w)
        arrays["optimizer_state"] = np.ascontiguousarray(state)
    cfg = json.dumps(_config(model, engine, step), indent=1, allow_nan=False)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    del arrays

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(_JSON, cfg)
            zf.writestr(_ARRAYS, buf.getbuffer())

    write_atomic(path, write)


# ------------------------------------------------------------------------------------ loading
_C_INT_MAX = 2 ** 31 - 1   # the engine takes layer widths as C ints
_INT64_LIMIT = 2 ** 63     # step and epoch counters are int64 natively
_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand one compressed byte into more than this
_NPY_HEADER_MAX = 10000    # numpy's own bound on an .npy header
_MEMBER_OVERHEAD = 1024    # zip local + central headers of one member, zip64 extras included
_CHUNK = 1 << 20


def _need(cond, path, msg):
    if not cond:
        raise ValueError(f"{path}: {msg}")


@contextlib.contextmanager
def _as_value_error(path, prefix, errors):
    """Re-raises `errors` (and ValueErrors not yet naming the file) as a ValueError
    "{path}: {prefix} (...)": every bad file reads the same to the caller."""
    try:
        yield
    except ValueError as e:
        if str(e).startswith(f"{path}:"):
            raise
        raise ValueError(f"{path}: {prefix} ({e})") from None
    except errors as e:
        raise ValueError(f"{path}: {prefix} ({type(e).__name__}: {e})") from None


def _reading(path, what):
    """What a damaged archive can raise while `what` is read, as a ValueError naming the file."""
    return _as_value_error(path, f"corrupt model file: {what}", (
        zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, OSError, struct.error))


def _config_errors(path):
    """Errors from rebuilding the model from its config (from_config, compile), naming the file."""
    return _as_value_error(path, "invalid model config", (KeyError, TypeError, AttributeError, IndexError,
                                                         OverflowError))


def _check_member(info, path, where, container_size):
    """Declared sizes of one zip member must be possible: it fits its container, and its stated
    uncompressed size is one its compression can produce (no zip bomb claims)."""
    name = f"{where}{info.filename}"
    _need(not info.flag_bits & 0x1, path, f"{name} is encrypted")
    _need(info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED), path,
          f"{name} uses compression method {info.compress_type}; only stored and deflated members are read")
    _need(info.compress_size <= container_size, path,
          f"corrupt model file: {name} declares {info.compress_size} compressed bytes in a {container_size}-byte file")
    if info.compress_type == zipfile.ZIP_STORED:
        _need(info.file_size == info.compress_size, path,
              f"corrupt model file: stored member {name} declares {info.file_size} bytes but holds "
              f"{info.compress_size}")
    else:
        _need(info.file_size <= info.compress_size * _DEFLATE_MAX_RATIO + 1024, path,
              f"corrupt model file: {name} claims {info.file_size} bytes from {info.compress_size} compressed "
              f"bytes, more than deflate can produce")


def _members(zf, path, allowed, where):
    """{name: ZipInfo} of an archive holding only names from `allowed`, each once."""
    infos = zf.infolist()
    names = [i.filename for i in infos]
    unknown = sorted(set(names) - set(allowed))
    _need(not unknown, path, f"{where} holds unknown member(s) {', '.join(map(repr, unknown[:5]))}"
                             f"{' ...' if len(unknown) > 5 else ''}; a fastmlp model file holds only its own")
    _need(len(names) == len(set(names)), path, f"{where} holds duplicate members")
    return {i.filename: i for i in infos}


class _MemberReader:
    """Seekable read-only view of a (compressed) zip member for zipfile to open as the npz inside.
    Reads forward; a backward seek restarts the member. Its last `tail` bytes (the npz's central
    directory) are kept, so opening the inner zip costs one pass instead of one per seek."""

    def __init__(self, zf, info, tail):
        self._zf, self._info, self._size = zf, info, info.file_size
        self._tail_start = max(0, self._size - tail)
        self._stream, self._at = zf.open(info), 0
        try:
            self._skip_to(self._tail_start)
            self._tail = self._stream.read(self._size - self._tail_start)
            if len(self._tail) != self._size - self._tail_start or self._stream.read(1):  # read(1): the CRC
                raise EOFError(f"{info.filename} is truncated")
        except BaseException:
            self._stream.close()
            raise
        self._at, self._pos = self._size, 0

    def _skip_to(self, pos):
        if pos < self._at:
            self._stream.close()
            self._stream, self._at = self._zf.open(self._info), 0
        while self._at < pos:
            n = len(self._stream.read(min(_CHUNK, pos - self._at)))
            if not n:
                raise EOFError(f"{self._info.filename} is truncated")
            self._at += n

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=0):
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = min(max(base + offset, 0), self._size)
        return self._pos

    def read(self, n=-1):
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        out = []
        while self._pos < end:
            if self._pos >= self._tail_start:
                out.append(self._tail[self._pos - self._tail_start:end - self._tail_start])
            else:
                self._skip_to(self._pos)
                out.append(self._stream.read(min(end, self._tail_start) - self._pos))
                if not out[-1]:
                    raise EOFError(f"{self._info.filename} is truncated")
                self._at += len(out[-1])
            self._pos += len(out[-1])
        return b"".join(out)

    def close(self):
        self._stream.close()


def _is_int(v, low, limit):
    return isinstance(v, int) and not isinstance(v, bool) and low <= v < limit


def _check_file(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not a fastmlp model file")
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: not a regular file, not a fastmlp model file")
    if st.st_size == 0:
        raise ValueError(f"{path}: empty file, not a fastmlp model")


def _read_config(zf, path, size):
    """The parsed fastmlp.json and {name: ZipInfo} of the checked outer members."""
    names = [i.filename for i in zf.infolist()]
    _need(_JSON in names, path, f"not a fastmlp model file (the archive has no {_JSON})")
    members = _members(zf, path, (_JSON, _ARRAYS), "the archive")
    for info in members.values():
        _check_member(info, path, "", size)
    _need(members[_JSON].file_size <= _MAX_JSON_BYTES, path, f"{_JSON} is implausibly large")
    with _reading(path, f"{_JSON} could not be read"):
        raw_json = zf.read(_JSON)
    try:
        cfg = json.loads(raw_json.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: e.g. a 5000-digit integer
        raise ValueError(f"{path}: corrupt model file: {_JSON} is not valid JSON ({e})") from None
    _need(isinstance(cfg, dict) and cfg.get("format") == FORMAT, path,
          f"not a fastmlp model file ({_JSON} has no format tag {FORMAT!r})")
    version = cfg.get("format_version")
    _need(isinstance(version, int) and not isinstance(version, bool), path, "format_version missing")
    _need(version <= FORMAT_VERSION, path, f"written in model format version {version}; this fastmlp reads "
                                           f"up to version {FORMAT_VERSION} (upgrade fastmlp)")
    return cfg, members


def _plan(cfg, path, device):
    """Everything load_model builds from fastmlp.json, before any engine exists: the (uncompiled)
    model, compile arguments, whether it is built, its step and the arrays the file must hold."""

    m = cfg["model"]
    _need(isinstance(m, dict) and m.get("class") == "Sequential", path, "model class must be Sequential")
    _need(isinstance(m["layers"], list) and m["layers"], path, "the model has no layers")
    layers = []
    for i, lc in enumerate(m["layers"]):
        _need(isinstance(lc, dict), path, f"layer {i} config is not an object")
        layer = _layers.from_config(lc)  # its "class" (none: a Dense, as format 1 wrote them)
        fan_in = layer.input_dim or 1
        _need(max(fan_in, layer.output_dim(fan_in)) <= _C_INT_MAX, path,
              f"layer {i} is wider than the engine's limit of {_C_INT_MAX} units")
        layers.append(layer)
    seed, epochs_seen = m["seed"], m["epochs_seen"]
    _need(_is_int(epochs_seen, 0, _INT64_LIMIT), path,
          f"epochs_seen must be an integer in [0, 2**63), got {epochs_seen!r}")
    _need(_is_int(seed, 0, 2 ** 64), path, f"seed must be an integer in [0, 2**64), got {seed!r}")
    name = m.get("name")
    _need(name is None or isinstance(name, str), path, "model name must be a string")
    model = Sequential(layers, seed=seed, name=name)
    if model.input_dim is not None:  # byte counts of params and state must fit the engine's int64
        n_params = sum(math.prod(s) for s in model._layer_shapes())
        _need(n_params * 8 * 4 < _INT64_LIMIT, path, f"the model claims an absurd {n_params} parameters")
    model._epochs_seen = epochs_seen
    hist = cfg.get("history")
    if isinstance(hist, dict):
        history = History()
        history.history = {str(k): [float(v) for v in vals] for k, vals in hist.items() if isinstance(vals, list)}
        model.history = history

    plan = {"model": model, "compile": None, "built": False, "step": None, "slots": 0, "optimizer": None}
    c = cfg.get("compile")
    if c is None:
        return plan
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
    further = c.get("metrics")  # several metrics (fastmlp.metrics); absent in older files
    _need(further is None or (isinstance(further, list) and metric is None), path, f"bad metrics {further!r}")
    if further is not None:
        try:
            metric_list = [_metrics.from_config(m) for m in further]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: bad metrics config: {exc}") from None
    else:
        metric_list = None if metric is None else [metric]
    _need(c["dtype"] in ("float32", "float64"), path, f"dtype must be 'float32' or 'float64', got {c['dtype']!r}")
    optimizer = _optimizers.from_config(c["optimizer"])
    plan["optimizer"] = optimizer
    plan["compile"] = dict(optimizer=optimizer, loss=_losses.from_config(c["loss"]),
                           metrics=metric_list, device=device, precision=precision,
                           dtype=c["dtype"])
    built = cfg.get("built", False)
    _need(isinstance(built, bool), path, f"built must be true or false, got {built!r}")
    if built:
        _need(model.input_dim is not None, path, "the model is marked as built but its input_dim is unknown")
        step, slots = cfg.get("step"), cfg.get("state_slots")
        _need(_is_int(step, 0, _INT64_LIMIT), path, f"optimizer step must be an integer in [0, 2**63), got {step!r}")
        expected = _core.optimizer_state_slots(optimizer.native())
        _need(slots == expected, path,
              f"optimizer state has {slots!r} slots per parameter, the optimizer uses {expected}")
        plan.update(built=True, step=step, slots=expected)
    else:  # compile would build it with fresh weights the file does not hold
        _need(model.input_dim is None, path, "the model is marked as not built but its input_dim is known")
    return plan


def _check_arrays(npz, path, expected, required, dtype, outer_size):
    """Checks names, declared sizes and npy headers of every array in the npz against the
    architecture, reading nothing but headers; returns {key: (ZipInfo, header bytes)}."""
    members = _members(npz, path, [k + ".npy" for k in expected], _ARRAYS) if expected else {}
    if not expected and npz.infolist():
        raise ValueError(f"{path}: weights present but the model is not built")
    for key in required:
        _need(key + ".npy" in members, path,
              f"{key} array is missing" if key == "optimizer_state" else f"weight array {key} is missing")
    found = {}
    for info in sorted(members.values(), key=lambda i: i.header_offset):  # forward through the npz
        key = info.filename[:-4]
        what = "optimizer_state" if key == "optimizer_state" else f"weight array {key}"
        _check_member(info, path, f"{_ARRAYS}/", outer_size)
        with npz.open(info) as f:
            version = np.lib.format.read_magic(f)
            _need(version in ((1, 0), (2, 0)), path, f"{_ARRAYS} could not be read ({key}: npy format {version})")
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dt = reader(f)
            header = f.tell()
        _need(not dt.hasobject, path, f"{_ARRAYS} could not be read ({key} holds Python objects; "
                                      "pickled data is never loaded)")
        _need(shape == expected[key], path, f"{what} has shape {shape}, expected {expected[key]}")
        _need(dt == dtype, path, f"{what} has dtype {dt}, expected {dtype}")
        _need(not fortran or len(shape) < 2, path, f"{what} is stored in Fortran order")
        nbytes = math.prod(shape) * dt.itemsize
        _need(info.file_size == header + nbytes, path,
              f"corrupt model file: {key} holds {info.file_size - header} data bytes, its shape needs {nbytes}")
        found[key] = (info, header)
    return found


class _NoArrays:
    """Stands for the npz of a file without arrays.npz."""

    @staticmethod
    def infolist():
        return []


def _read_into(npz, info, header, out, path, key):
    """Reads one array's data into `out` (a contiguous array of its size), never more."""
    view = memoryview(out).cast("B")
    with npz.open(info) as f:
        f.read(header)
        got = 0
        while got < len(view):
            n = f.readinto(view[got:got + _CHUNK])
            if not n:
                break
            got += n
        _need(got == len(view) and not f.read(1), path, f"corrupt model file: {key} is truncated")


def load_model(path, device=None, compile: bool = True):  # noqa: A002 - Keras' keyword name
    """Rebuilds a model saved with model.save(path): layers, compile config, weights, optimizer state.

    device: None uses the saved device (falling back to the CPU when a saved CUDA model is loaded
    where CUDA is unavailable); 'cpu', 'cuda', 'auto' override it. compile=False returns the
    model compiled with the saved config and weights, but a fresh optimizer state (step 0).

    Every size the file declares (zip members, npy headers) is checked against the architecture
    in fastmlp.json before anything is read or allocated; unknown members are rejected; data is
    streamed, so memory stays near the size of the model itself. Problems raise ValueError naming
    the file."""
    path = os.fspath(path)
    _check_file(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if not zipfile.is_zipfile(f):
            raise ValueError(f"{path}: not a fastmlp model file (not a zip archive; truncated or a different format)")
        with _reading(path, "not a readable zip archive"):
            zf = zipfile.ZipFile(f)
        with zf, contextlib.ExitStack() as stack:
            cfg, members = _read_config(zf, path, size)
            with _config_errors(path):
                plan = _plan(cfg, path, device)
            model, built, opt = plan["model"], plan["built"], plan["optimizer"]
            dtype = np.dtype(plan["compile"]["dtype"]) if plan["compile"] else np.dtype(np.float32)
            expected = {}
            if built:
                expected = dict(_array_layout(model))  # shapes from the layer classes, not the file
                n_params = sum(math.prod(s) for s in expected.values())
                expected["optimizer_state"] = (plan["slots"] * n_params,)
            required = [k for k in expected if compile or k != "optimizer_state"]
            # a bound from the architecture, checked before the member is even opened
            allow = sum(math.prod(s) for s in expected.values()) * dtype.itemsize \
                + (len(expected) + 1) * (_NPY_HEADER_MAX + _MEMBER_OVERHEAD)
            info = members.get(_ARRAYS)
            found = {}
            if info is None:
                _check_arrays(_NoArrays, path, expected, required, dtype, 0)
            else:
                _need(info.file_size <= allow, path, f"corrupt model file: {_ARRAYS} declares {info.file_size} "
                                                     f"bytes, more than the {allow} the model in {_JSON} can need")
                with _reading(path, f"{_ARRAYS} could not be read"):
                    reader = stack.enter_context(contextlib.closing(
                        _MemberReader(zf, info, (len(expected) + 1) * _MEMBER_OVERHEAD + 65536)))
                    npz = stack.enter_context(zipfile.ZipFile(reader))
                    found = _check_arrays(npz, path, expected, required, dtype, info.file_size)
            if plan["compile"] is None:
                return model
            with _config_errors(path):
                model.compile(**plan["compile"])
            if not built:
                return model
            engine = model._engine
            _need(engine.num_params == n_params and engine.state_slots == plan["slots"], path,
                  "the engine's layout does not match the file")  # a safeguard: cannot happen
            starts = dict(zip(expected, itertools.accumulate((math.prod(s) for s in expected.values()), initial=0)))
            with _reading(path, f"{_ARRAYS} could not be read"):
                # One buffer, read in place: first the flat weights, then (the engine has copied
                # them) the state; so a load needs the engine plus the larger of the two.
                buf = np.empty(max(n_params, expected["optimizer_state"][0] if compile else 0), dtype)
                params = buf[:n_params]
                for key, (member, header) in sorted(found.items(), key=lambda kv: kv[1][0].header_offset):
                    if key != "optimizer_state":  # in file order: no backward seek in a compressed stream
                        part = params[starts[key]:starts[key] + math.prod(expected[key])]
                        _read_into(npz, member, header, part, path, key)
                        _need(bool(np.isfinite(part).all()), path, f"weight array {key} contains NaN or Inf")
                engine.set_params(params)
                if compile:
                    state = buf[:expected["optimizer_state"][0]]
                    _read_into(npz, *found["optimizer_state"], state, path, "optimizer_state")
                    _check_state(state, opt, n_params, path)
                    engine.set_state(state)
                    engine.step = plan["step"]
    return model


def _check_state(state, opt, n_params, path):
    """Optimizer state must be finite, and squared-gradient accumulators non-negative: a NaN or a
    negative there would surface later as a diverging fit blamed on the learning rate."""
    squared = opt.nonnegative_state_slots()
    for s in range(state.size // n_params if n_params else 0):
        part = state[s * n_params:(s + 1) * n_params]
        _need(bool(np.isfinite(part).all()), path, f"optimizer_state slot {s} contains NaN or Inf")
        if s in squared:
            _need(not bool((part < 0).any()), path, f"optimizer_state slot {s} ({opt.kind} {squared[s]}) holds "
                                                    "negative values; it accumulates squared gradients")


__all__ = ["save_model", "load_model", "FORMAT", "FORMAT_VERSION"]
