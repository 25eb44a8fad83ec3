"""What Keras users reach for to look into and move a model, for fm.Sequential: layer names,
get_layer, each layer's get_weights/set_weights, get_config/from_config/to_json (the
architecture, Keras-style) and save_weights/load_weights (the weights alone, a .npz of plain
arrays, no pickle). Sequential's methods of the same names call these."""
from __future__ import annotations

import json
import os

import numpy as np

from . import layers as _layers
from ._atomic_write import write_atomic

# Names that promise another library's file format: fastmlp writes its own and says so instead.
FOREIGN_SUFFIXES = {".keras": "Keras", ".h5": "HDF5 (Keras)", ".hdf5": "HDF5 (Keras)", ".pt": "PyTorch",
                    ".pth": "PyTorch", ".onnx": "ONNX (use model.export_onnx)", ".pkl": "pickle",
                    ".pickle": "pickle", ".safetensors": "safetensors"}


def refuse_foreign_suffix(path, what: str, ours: str):
    """ValueError when `path` ends in a suffix of another format (model.save('m.keras'))."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix in FOREIGN_SUFFIXES:
        raise ValueError(f"{what} writes fastmlp's own format, not {FOREIGN_SUFFIXES[suffix]}: {os.fspath(path)!r} "
                         f"would promise one; use a name ending in {ours}")


# -------------------------------------------------------------------------------- names
def unique_name(model, layer) -> str:
    """Keras's naming: the layer kind, then kind_1, kind_2, ... unique within the model."""
    base = {"dense": "dense", "dropout": "dropout", "batch_normalization": "batch_normalization",
            "layer_normalization": "layer_normalization", "activation": "activation"}.get(layer.kind, layer.kind)
    taken = {other.name for other in model.layers}
    if base not in taken:
        return base
    i = 1
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


def get_layer(model, name=None, index=None):
    """The layer called `name`, or at position `index` (Keras's get_layer); exactly one of them."""
    if (name is None) == (index is None):
        raise ValueError("get_layer takes a name or an index (one of them)")
    if index is not None:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an integer, got {index!r}")
        if not -len(model.layers) <= index < len(model.layers):
            raise ValueError(f"index {index} is out of range: the model has {len(model.layers)} layers")
        return model.layers[index]
    for layer in model.layers:
        if layer.name == name:
            return layer
    raise ValueError(f"no layer named {name!r}; the layers are {[layer.name for layer in model.layers]}")


# ------------------------------------------------------------------------ layer weights
def _slot(layer):
    """(model, index of the layer's first weight in get_weights(), count) of a layer in a model."""
    model = layer._model() if getattr(layer, "_model", None) is not None else None
    if model is None or not any(other is layer for other in model.layers):
        raise RuntimeError(f"{layer!r} is not in a model: add it to an fm.Sequential first")
    start, fan_in = 0, model.input_dim
    for other in model.layers:
        count = len(other.weight_shapes(fan_in))
        if other is layer:
            return model, start, count
        start += count
        fan_in = other.output_dim(fan_in)
    raise AssertionError("unreachable")


def layer_get_weights(layer) -> list:
    model, start, count = _slot(layer)
    if count == 0:
        return []
    return model.get_weights()[start:start + count]


def layer_set_weights(layer, weights) -> None:
    """Replaces this layer's weights only (same shapes as its get_weights()); the model is left
    as it was when any array is wrong."""
    model, start, count = _slot(layer)
    weights = list(weights)
    if len(weights) != count:
        raise ValueError(f"{layer.name} has {count} weight arrays, got {len(weights)}")
    if count == 0:
        return
    current = model.get_weights()
    current[start:start + count] = weights
    model.set_weights(current)


# ------------------------------------------------------------------------ architecture
def get_config(model) -> dict:
    """The architecture: Keras's {"name", "layers": [...]} plus fastmlp's seed (no weights, no
    compile settings: those are model.save's)."""
    return {"class": "Sequential", "name": model.name, "seed": model.seed,
            "layers": [layer.get_config() for layer in model.layers]}


def from_config(cls, config):
    """A new, uncompiled Sequential with the layers `config` describes (get_config's output)."""
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise ValueError("a Sequential config is a dict with a 'layers' list (model.get_config())")
    extra = set(config) - {"class", "name", "seed", "layers"}
    if extra:
        raise ValueError(f"unknown Sequential config fields {sorted(extra)}")
    if config.get("class", "Sequential") != "Sequential":
        raise ValueError(f"not a Sequential config: class {config.get('class')!r}")
    layer_list = []
    for i, layer_config in enumerate(config["layers"]):
        try:
            layer_list.append(_layers.from_config(layer_config))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"layer {i} of the config: {exc}") from None
    return cls(layer_list, seed=config.get("seed"), name=config.get("name"))


def to_json(model, **kwargs) -> str:
    return json.dumps(get_config(model), **kwargs)


# ----------------------------------------------------------------------- weights files
WEIGHTS_SUFFIX = ".weights.npz"


def save_weights(model, path) -> None:
    """The weights alone (get_weights() order) as a .npz of plain arrays named by layer
    (W0, b0, gamma1, ...), written atomically; the name must end in .weights.npz."""
    from .saving import _array_layout

    path = os.fspath(path)
    if not str(path).endswith(WEIGHTS_SUFFIX):
        raise ValueError(f"save_weights writes a .npz of arrays: the file name must end in {WEIGHTS_SUFFIX}, got "
                         f"{path!r} (model.save writes the whole model)")
    arrays = dict(zip((key for key, _ in _array_layout(model)), model.get_weights()))

    def write(f):
        np.savez(f, **arrays)

    write_atomic(path, write)


def load_weights(model, path) -> None:
    """Sets the weights save_weights wrote, after checking every name and shape against this
    model (no pickle is ever loaded); the model is left as it was on any error."""
    from .saving import _array_layout

    path = os.fspath(path)
    if model._engine is None:
        raise RuntimeError("load_weights needs a built model: compile it with a known input_dim (or fit) first")
    layout = _array_layout(model)
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("not a .npz archive")
    except (OSError, EOFError, ValueError) as exc:  # a missing file, or not a .npz of plain arrays
        raise ValueError(f"cannot read weights from {path!r}: {exc}") from None
    with npz:
        names = set(npz.files)
        want = {key for key, _ in layout}
        if names != want:
            raise ValueError(f"{path!r} holds arrays {sorted(names)} but this model's weights are {sorted(want)}")
        weights = []
        for key, shape in layout:
            try:
                arr = npz[key]
            except (OSError, EOFError, ValueError) as exc:  # e.g. an object array: never unpickled
                raise ValueError(f"cannot read {key} from {path!r}: {exc}") from None
            if tuple(arr.shape) != tuple(shape):
                raise ValueError(f"{path!r}: {key} has shape {arr.shape}, this model needs {tuple(shape)}")
            weights.append(arr)
    model.set_weights(weights)
