"""Sequential: a stack of layers (structure and configuration), compiled with a loss and optimizer.

Sequential holds the layers and the compile configuration, owns the native engine and the
thread-safety rules of calls on it. Beside it: model_data.py turns user data into engine
datasets, training.py runs fit's epochs and callbacks (the steps themselves run in C++ with the
GIL released), saving.py writes and reads model files (it imports this module; Sequential.save
imports it only when called, so `import fastmlp` stays light).
"""
from __future__ import annotations

import os
import re
import sys
import threading
import weakref

import numpy as np

from . import _core
from . import activations as _activations
from . import chunked as _chunked
from . import losses as _losses
from . import metrics as _metrics
from . import model_structure as _structure
from . import optimizers as _optimizers
from ._enums import LOSS_IDS, METRIC_IDS
from . import model_data as _model_data
from . import training as _training
from ._validation import non_negative_int, positive_int
from .callbacks import History
from .layers import Dense, Layer
from .resident import ResidentDataset
from .training import _EVAL_BATCH, NonFiniteLossError


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def cuda_is_available() -> bool:
    return bool(_core.cuda_info()["available"])


def resolve_device(device) -> str:
    if device is None or device == "auto":
        device = "cuda" if cuda_is_available() else "cpu"
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu', 'cuda' or 'auto', got {device!r}")
    device = device.lower()
    if device == "gpu":
        device = "cuda"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    distributed = sys.modules.get("fastmlp.distributed")
    if device == "cuda" and distributed is not None and distributed.world_size() > 1:
        device = f"cuda:{distributed.local_rank()}"  # one GPU per rank on a node, as torchrun's LOCAL_RANK
    return device


_REGRESSION_LOSSES = ("mse", "poisson", "huber", "mae", "log_cosh")
_FUSED_METRICS = ("accuracy", "acc", "binary_accuracy", "mae", "mean_absolute_error")


def _single_fused_metric(metrics) -> bool:
    """None, [] or one name the engine's fused metric computes: the original single-metric path."""
    if metrics is None or isinstance(metrics, str):
        return metrics is None or metrics.lower() in _FUSED_METRICS
    names = list(metrics)
    return len(names) == 0 or (len(names) == 1 and isinstance(names[0], str) and names[0].lower() in _FUSED_METRICS)


def _resolve_metric(metrics, loss: _losses.Loss):
    """Returns (native metric id name, history key) for the compile(metrics=...) list."""
    if metrics is None:
        return None, None
    if isinstance(metrics, str):
        metrics = [metrics]
    names = [m for m in metrics]
    if len(names) == 0:
        return None, None
    if len(names) > 1:
        raise ValueError(f"one metric is supported per model, got {names}")
    m = names[0]
    if not isinstance(m, str):
        raise TypeError(f"metrics must be names such as 'accuracy', got {m!r}")
    key = m.lower()
    if key in ("accuracy", "acc", "binary_accuracy"):
        if loss.name in _REGRESSION_LOSSES:
            raise ValueError(f"accuracy needs a classification loss, not {loss.name}")
        native = "binary_accuracy" if loss.name == "binary_crossentropy" else "accuracy"
        if key == "binary_accuracy" and native != "binary_accuracy":
            raise ValueError("binary_accuracy goes with binary_crossentropy; use 'accuracy'")
        return native, "accuracy" if key == "acc" else key
    if key in ("mae", "mean_absolute_error"):
        if loss.name not in _REGRESSION_LOSSES:
            raise ValueError(f"mae is available with a regression loss ({', '.join(_REGRESSION_LOSSES)})")
        return "mae", "mae"
    raise ValueError(f"unknown metric {m!r}; choose 'accuracy', 'binary_accuracy' or 'mae'")


class Sequential:
    """A feed-forward network of layers (Keras-style API)."""

    def __init__(self, layers=None, seed: int | None = None, name: str | None = None):
        self.layers: list[Dense] = []
        self._engine = None
        self._compile_args: dict | None = None
        self._epochs_seen = 0  # epochs trained so far: picks each epoch's shuffle stream
        for layer in layers or []:
            self.add(layer)
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little") >> 1
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 64:  # uint64
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        self.seed = int(seed)
        self.name = name or "sequential"
        self._stop_training = False
        self._stop_requests = 0  # counts assignments of True: a batch hook's request is seen even if already set
        self.history: History | None = None
        # Threads: the native engine serializes calls on one model (a training call hands over
        # between steps). This lock orders the Python-side changes (compile, set_weights,
        # train_on_batch, the start and end of fit); _fit_thread marks the thread that is fitting.
        self._lock = threading.RLock()
        self._fit_thread: int | None = None
        self._data_budget = None  # see data_budget

    @property
    def _fitting(self) -> bool:
        return self._fit_thread is not None

    def _check_not_fitting(self, what: str, from_callback_ok: bool = False):
        """RuntimeError when fit is training this model and `what` would change it: always from
        another thread; from fit's own thread (a callback) unless from_callback_ok."""
        owner = self._fit_thread
        if owner is None:
            return
        if owner != threading.get_ident():
            raise RuntimeError(f"{what} cannot run while another thread is training this model with fit; "
                               "wait for fit to return (predict, evaluate and get_weights may run meanwhile)")
        if not from_callback_ok:
            raise RuntimeError(f"{what} cannot run while fit is training this model (called from a callback?)")

    @property
    def stop_training(self) -> bool:
        """Set to True (e.g. by a callback) to end fit after the current epoch; from a batch hook,
        after the current group of batches."""
        return self._stop_training

    @stop_training.setter
    def stop_training(self, value):
        self._stop_training = bool(value)
        self._stop_requests += bool(value)

    # ------------------------------------------------------------------ structure
    def add(self, layer: Layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential holds fastmlp layers (fm.Dense, fm.Dropout, ...), got {type(layer).__name__}")
        if self._engine is not None:
            raise RuntimeError("layers cannot be added after the model is built")
        if not self.layers and not isinstance(layer, Dense) and layer.input_dim is None:
            # Only a Dense learns its input width from the first data it sees.
            raise ValueError(f"{type(layer).__name__} as the first layer needs input_dim=... (the number of features)")
        width = self._output_dim()
        if self.layers and layer.input_dim is not None and width is not None and layer.input_dim != width:
            raise ValueError(f"layer input_dim {layer.input_dim} does not match the previous layer's output width {width}")
        if layer.name is None:  # Keras's names: dense, dense_1, ... unique in the model
            layer.name = _structure.unique_name(self, layer)
        # (names a user repeats are kept, as files saved by older fastmlp may hold them; get_layer
        # then finds the first)
        layer._model = weakref.ref(self)  # layer.get_weights() reads this model's weights
        self.layers.append(layer)

    def _output_dim(self, input_dim=None):
        """Width of the model's output (None while the input width is unknown and no Dense sets it)."""
        width = self.input_dim if input_dim is None else input_dim
        for layer in self.layers:
            width = layer.output_dim(width) if width is not None else getattr(layer, "units", None)
        return width

    @property
    def _final_activation(self):
        """The activation the loss applies to the logits: the last layer's, when it has one."""
        act = self.layers[-1].final_activation if self.layers else None
        return act if act is not None else _activations.get("linear")

    @property
    def input_dim(self) -> int | None:
        return self.layers[0].input_dim if self.layers else None

    @property
    def built(self) -> bool:
        return self._engine is not None

    def _layer_shapes(self, input_dim=None):
        """Shapes of all weights in get_weights() order, layer after layer."""
        shapes, fan_in = [], self.input_dim if input_dim is None else input_dim
        for layer in self.layers:
            shapes += layer.weight_shapes(fan_in)
            fan_in = layer.output_dim(fan_in)
        return shapes

    # --------------------------------------------------------------------- compile
    def compile(self, optimizer="adam", loss=None, metrics=None, *, device="auto", precision="float32",
                dtype="float32"):
        """Sets loss, optimizer and metric. device: 'auto' (CUDA when available), 'cpu', 'cuda[:N]'.
        precision (CUDA): 'float32', 'tf32' or 'bf16'. dtype 'float64' gives a CPU float64 engine."""
        if not self.layers:
            raise ValueError("add at least one Dense layer before compile")
        if loss is None:
            raise ValueError("compile needs a loss, e.g. loss='sparse_categorical_crossentropy'")
        loss_obj = _losses.get(loss)
        opt = _optimizers.get(optimizer)
        if isinstance(opt, _optimizers.FullBatchOptimizer):
            opt.check_model(self)
            opt.reset()
        if _single_fused_metric(metrics):  # the engine's original fused metric, as before
            metric_native, metric_key = _resolve_metric(metrics, loss_obj)
            further = []
        else:  # several metrics (or metric objects): each in its own native slots (fastmlp.metrics)
            metric_native, metric_key = None, None
            further = _metrics.plan(metrics if not isinstance(metrics, str) else [metrics], loss_obj,
                                    self._output_dim())
        device = resolve_device(device)
        if dtype not in ("float32", "float64", np.float32, np.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        dtype = np.dtype(dtype)
        if precision not in ("float32", "tf32", "bf16"):
            raise ValueError(f"precision must be 'float32', 'tf32' or 'bf16', got {precision!r}")
        if precision != "float32" and not device.startswith("cuda"):
            raise ValueError(f"precision={precision!r} needs the CUDA backend")
        if dtype == np.float64 and device != "cpu":
            raise ValueError("dtype='float64' is available on the CPU backend only (use device='cpu')")
        out = self._final_activation.name
        if loss_obj.name in ("sparse_categorical_crossentropy", "categorical_crossentropy"):
            if not (out == "softmax" or (out == "linear" and loss_obj.from_logits)):
                raise ValueError(f"{loss_obj.name} needs a softmax output layer, or a linear output with "
                                 f"from_logits=True (output activation is {out!r})")
        if loss_obj.name == "binary_crossentropy":
            if not (out == "sigmoid" or (out == "linear" and loss_obj.from_logits)):
                raise ValueError(f"binary_crossentropy needs a sigmoid output layer, or a linear output with "
                                 f"from_logits=True (output activation is {out!r})")
        if out == "softmax" and loss_obj.from_logits:
            raise ValueError("from_logits=True means a linear output layer, but the output is softmax")
        for i, layer in enumerate(self.layers[:-1]):
            if getattr(layer.final_activation, "name", None) == "softmax":
                raise ValueError(f"layer {i} ({type(layer).__name__}): softmax is only supported as the model's "
                                 "last activation")
        for layer in self.layers:
            check_dtype = getattr(getattr(layer, "kernel_initializer", None), "check_dtype", None)
            if check_dtype is not None:  # e.g. RandomNormal(1e39) cannot be drawn in float32
                check_dtype(dtype)
        # The optimizer is copied: one instance given to two models must not tie their learning rates.
        args = dict(optimizer=opt.copy(), loss=loss_obj, metric=metric_native, metric_key=metric_key,
                    further_metrics=further, device=device, precision=precision, dtype=dtype)
        with self._lock:
            self._check_not_fitting("compile")
            # Everything that can fail (the device, memory, converting the trained weights) happens
            # on a new engine; the model changes only once it succeeded.
            engine = None
            if self.input_dim is not None:
                engine = self._make_engine(args, self.input_dim)
                if self._engine is not None:  # recompiling keeps the trained weights
                    engine.set_params(self._flat_weights(self.get_weights(), self._layer_shapes(), dtype))
            self._compile_args, self._engine = args, engine

    @property
    def optimizer(self):
        return None if self._compile_args is None else self._compile_args["optimizer"]

    @property
    def loss(self):
        return None if self._compile_args is None else self._compile_args["loss"]

    @property
    def device(self) -> str | None:
        return None if self._engine is None else self._engine.device

    def _require_compiled(self, what: str):
        if self._compile_args is None:
            raise RuntimeError(f"call model.compile(...) before {what}")

    def _new_engine(self, dtype, device: str, precision: str, input_dim=None, args=None):
        """A native engine for these layers, loss and metric (weights uninitialized)."""
        args = self._compile_args if args is None else args
        layers = [layer.native(self.seed, i) for i, layer in enumerate(self.layers)]
        cls = _core.Engine64 if np.dtype(dtype) == np.float64 else _core.Engine32
        return cls(self.input_dim if input_dim is None else input_dim, layers, LOSS_IDS[args["loss"].name],
                   METRIC_IDS[args["metric"]], device, precision, float(args["loss"].param),
                   _metrics.native(args.get("further_metrics", [])))

    def _make_engine(self, args, input_dim: int):
        """A new engine for compile config `args` and this input width, its weights initialized from
        the seed and its optimizer set. Changes nothing in the model."""
        engine = self._new_engine(args["dtype"], args["device"], args["precision"], int(input_dim), args)
        engine.initialize([layer.init_spec() for layer in self.layers],
                          _core.derive_seed(self.seed, 0))
        engine.set_optimizer(args["optimizer"].native(), True)
        engine.data_budget = self._data_budget
        return engine

    def _adopt_engine(self, engine, input_dim: int):
        if self.layers[0].input_dim is None:
            self.layers[0].input_dim = int(input_dim)
        self._engine = engine

    def _build(self, input_dim: int):
        """Creates the native engine for this input width and initializes the weights from the seed."""
        with self._lock:
            self._adopt_engine(self._make_engine(self._compile_args, input_dim), input_dim)

    def _ensure_built(self, x_cols: int):
        if self._engine is None:
            with self._lock:
                if self._engine is None:  # another thread may have built it meanwhile
                    self._build(x_cols)

    # ------------------------------------------------------------------ data prep
    @property
    def _dtype(self):
        return self._compile_args["dtype"] if self._compile_args else np.dtype(np.float32)

    def _x(self, x, name="x"):
        return _model_data.features(self, x, name)

    def _y(self, y, n, name="y"):
        return _model_data.targets(self, y, n, name)

    def _xy(self, x, y, xname="x", yname="y"):
        return _model_data.features_and_targets(self, x, y, xname, yname)

    def _data(self, x, y=None, xname="x", yname="y", copy_device_arrays=False, sample_weight=None):
        """Validated (x, y) as an engine dataset and its row count (fastmlp.model_data.dataset)."""
        return _model_data.dataset(self, x, y, xname, yname, copy_device_arrays, sample_weight)

    def _upload_arrays(self, x, y, xname, yname, borrow=True):
        return _model_data.upload_arrays(self, x, y, xname, yname, borrow=borrow)

    @property
    def data_budget(self) -> int | None:
        """Bytes of backend memory one dataset may take before it is streamed from host memory in
        chunks instead of copied whole (fit, evaluate and predict stream it; results are identical).
        None (default): the backend decides: free GPU memory less a reserve for the workspace on
        CUDA, unlimited on the CPU. Set a number to leave GPU memory to others."""
        return self._data_budget

    @data_budget.setter
    def data_budget(self, value):
        if value is not None:
            value = non_negative_int(value, "data_budget")
        self._data_budget = value
        if self._engine is not None:
            self._engine.data_budget = value

    def upload(self, x, y=None, sample_weight=None) -> ResidentDataset:
        """Validates x (and y) and copies them once into this model's backend memory (the GPU for a
        CUDA model; GPU arrays are copied there too, so the source may go). Pass the result to fit / evaluate / predict in place of x, here or in any other
        compiled model on the same device with the same dtype, input width and target layout, to
        train many times (or many models) without copying the data again. sample_weight (with y):
        one weight >= 0 per row, kept with the targets (as fit's sample_weight)."""
        self._require_compiled("upload")
        if isinstance(x, ResidentDataset):
            raise TypeError("x is already a ResidentDataset")
        native, _ = self._data(x, y, copy_device_arrays=True, sample_weight=sample_weight)
        return ResidentDataset(native, self._dtype)

    def _metric_logs(self, result: dict, prefix="") -> dict:
        return _training.metric_logs(self, result, prefix)

    # ----------------------------------------------------------------------- fit
    def fit(self, x, y=None, batch_size=None, epochs=1, verbose=1, callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, initial_epoch=0, sample_weight=None, class_weight=None,
            steps_per_epoch=None, validation_steps=None, *, sharded=False):
        """Trains for `epochs` epochs (counting from initial_epoch) and returns a History.
        batch_size: None means 32 (Keras), or all training rows with a full-batch method (LBFGS,
        Newton, HessianFree: one step of it per epoch; a smaller batch_size takes one step per batch).
        x, y: arrays (NumPy, lists, GPU arrays), or x a ResidentDataset (model.upload) and no y.
        validation_data: a tuple (x_val, y_val), (x_val, y_val, val_sample_weight) or a
        ResidentDataset with targets. x may also be a data source: a generator, Keras-style Sequence
        or DataLoader yielding (x, y[, sample_weight]) chunks (fastmlp.chunked), steps_per_epoch of
        them per epoch (default: one pass), each trained natively in batches of batch_size (None:
        the chunk is one step); validation_data may be one too (validation_steps).
        sample_weight: one weight >= 0 per row; class_weight: {class index: weight} (classes not
        listed weigh 1), multiplied into sample_weight. As in Keras, a batch's loss is the sum of
        weight * loss over its rows divided by its row count (not by the sum of the weights), and
        the metric is not weighted. On the CPU a C-contiguous x of the model's dtype is read in
        place, not copied: do not change it while fit runs (model.upload makes a copy).
        After fastmlp.distributed.init() in a job of several ranks, fit trains data-parallel
        (batch_size is the global batch); sharded=True says x, y (and validation data) are this
        rank's own shard of the rows instead of all of them (docs/distributed.md)."""
        self._require_compiled("fit")
        with self._lock:
            if self._fit_thread is not None:
                where = "in another thread" if self._fit_thread != threading.get_ident() else "(called from a callback?)"
                raise RuntimeError(f"fit is already running on this model {where}")
            self._check_not_fitting("fit")
            self._fit_thread = threading.get_ident()
        try:
            return _training.fit(self, x, y, batch_size, epochs, verbose, callbacks, validation_split,
                                 validation_data, shuffle, initial_epoch, sample_weight, class_weight,
                                 steps_per_epoch, validation_steps, sharded)
        finally:
            self._fit_thread = None

    # --------------------------------------------------------- evaluate / predict
    def evaluate(self, x, y=None, batch_size=None, verbose=0, sample_weight=None, steps=None):
        """Mean loss (with regularization penalty) and metric: {"loss": ..., "accuracy": ...}.
        sample_weight: the loss is the mean over the rows of weight * loss (as in fit). x may be a
        source of (x, y[, sample_weight]) chunks (fastmlp.chunked), `steps` of them (default: one pass)."""
        self._require_compiled("evaluate")
        bs = _EVAL_BATCH if batch_size is None else positive_int(batch_size, "batch_size")
        if _chunked.is_chunk_source(x):
            if y is not None or sample_weight is not None:
                raise ValueError("a data source yields (x, y[, sample_weight]) chunks itself: leave y and "
                                 "sample_weight out")
            source = _chunked.ChunkSource(x, _chunked.check_steps(steps, "steps"), "evaluation")
            return self._report(_chunked.evaluate(self, source, bs), verbose)
        if steps is not None:
            raise ValueError("steps goes with a data source (a generator, Sequence or DataLoader), not with arrays")
        if y is None and not isinstance(x, ResidentDataset):
            raise ValueError("evaluate got no targets (y is None): call evaluate(x, y)")
        data, _ = self._data(x, y, sample_weight=sample_weight)
        result = self._engine.evaluate(data, bs)
        return self._report(result, verbose)

    def _report(self, result, verbose):
        logs = self._metric_logs(result)
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        return logs

    def predict(self, x, batch_size=None, verbose=0, steps=None):
        """Output of the last layer's activation (softmax probabilities, sigmoid, ...). x may be a
        source of chunks (x, or tuples whose first item is x), `steps` of them (default: one pass)."""
        self._require_compiled("predict")
        bs = _EVAL_BATCH if batch_size is None else positive_int(batch_size, "batch_size")
        if _chunked.is_chunk_source(x):
            return _chunked.predict(self, _chunked.ChunkSource(x, _chunked.check_steps(steps, "steps"), "prediction"),
                                    bs)
        if steps is not None:
            raise ValueError("steps goes with a data source (a generator, Sequence or DataLoader), not with arrays")
        data, _ = self._data(x)
        return self._engine.predict(data, bs)

    def __call__(self, x):
        return self.predict(x)

    # --------------------------------------------------------------- one batch
    def train_on_batch(self, x, y=None) -> float:
        """One optimizer step on exactly this batch; returns its loss (before the step). A step whose
        loss or update is NaN/Inf is undone whole (NonFiniteLossError); for that the first call
        keeps a copy of the weights and optimizer state in backend memory ((1 + state slots) x
        parameters, e.g. 3x for Adam) for the model's lifetime."""
        self._require_compiled("train_on_batch")
        self._check_not_fitting("train_on_batch")
        if y is None and not isinstance(x, ResidentDataset):
            raise ValueError("train_on_batch got no targets (y is None): call train_on_batch(x, y)")
        with self._lock:  # concurrent calls take turns; a fit in another thread makes them raise
            self._check_not_fitting("train_on_batch")
            data, _ = self._data(x, y)
            if isinstance(self.optimizer, _optimizers.FullBatchOptimizer):  # one step of it on this batch
                result = self.optimizer.step(self._engine, data)
            else:
                result = self._engine.train_on_batch(data)  # a non-finite step is undone natively, whole
        if result["nonfinite"]:
            raise NonFiniteLossError("the loss of this batch, or its update, is NaN or Inf (learning rate too large?); "
                                     "the weights were not updated")
        return float(result["loss"])

    def compute_gradients(self, x, y=None):
        """Gradients of mean loss + regularization, in get_weights() order and shapes."""
        self._require_compiled("compute_gradients")
        if y is None and not isinstance(x, ResidentDataset):
            raise ValueError("compute_gradients got no targets (y is None): call compute_gradients(x, y)")
        data, _ = self._data(x, y)
        _, flat = self._engine.compute_gradients(data)
        return self._unflatten(flat)

    # ------------------------------------------------------------------- weights
    def _unflatten(self, flat):
        out, off = [], 0
        for shape in self._layer_shapes():
            n = int(np.prod(shape))
            out.append(flat[off:off + n].reshape(shape).copy())
            off += n
        return out

    def get_weights(self):
        """[W1 (in, out), b1 (out,), W2, b2, ...] as copies (Keras layout)."""
        if self._engine is None:
            raise RuntimeError("the model has no weights yet: compile it with a known input_dim or fit it first")
        return self._unflatten(self._engine.get_params())

    def set_weights(self, weights):
        """Sets [W1, b1, W2, b2, ...] (get_weights() order and shapes). On a model that is not built
        yet, W1's first dimension gives the input width. Raises without changing the model when any
        array is wrong."""
        if self._compile_args is None:
            raise RuntimeError("call model.compile(...) before set_weights")
        weights = list(weights)
        with self._lock:
            # A callback of fit may set weights (between epochs or batch groups); another thread may not.
            self._check_not_fitting("set_weights", from_callback_ok=True)
            if self._engine is not None:
                self._engine.set_params(self._flat_weights(weights, self._layer_shapes()))
                return
            if not weights or np.ndim(weights[0]) != 2 or np.shape(weights[0])[0] < 1:
                raise ValueError("set_weights needs [W1, b1, ...] with W1 of shape (input_dim, units)")
            input_dim = int(np.shape(weights[0])[0])
            flat = self._flat_weights(weights, self._layer_shapes(input_dim))
            engine = self._make_engine(self._compile_args, input_dim)
            engine.set_params(flat)
            self._adopt_engine(engine, input_dim)

    def _flat_weights(self, weights, shapes, dtype=None):
        """The weights checked against shapes and concatenated into one flat array of dtype."""
        dtype = self._dtype if dtype is None else np.dtype(dtype)
        weights = list(weights)
        if len(weights) != len(shapes):
            raise ValueError(f"set_weights expects {len(shapes)} arrays, got {len(weights)}")
        names = [n for layer in self.layers for n in layer.weight_names()]
        parts = []
        for i, (w, shape) in enumerate(zip(weights, shapes)):
            arr = np.asarray(w)
            if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
                raise TypeError(f"weight {i} must be numeric, got dtype {arr.dtype}")
            if arr.shape != shape:
                raise ValueError(f"weight {i} has shape {arr.shape}, expected {shape}")
            with np.errstate(over="ignore"):  # overflow is reported below, by name
                arr = arr.astype(dtype, copy=False)
            if not np.isfinite(arr).all():
                raise ValueError(f"weight {i} contains NaN or Inf (or values too large for {dtype.name})")
            if i < len(names) and names[i] == "moving_variance" and (arr < 0).any():
                raise ValueError(f"weight {i} is a BatchNormalization moving_variance and has negative values")
            parts.append(arr.ravel())
        return np.concatenate(parts)

    def save(self, path):
        """Writes the model (architecture, compile config, weights, optimizer state) to one file of
        fastmlp's format (e.g. "model.fm"); fm.load_model(path) restores it. See fastmlp.saving. A
        name promising another format ("m.keras", "m.h5", "m.pt", "m.onnx") is refused."""
        from .saving import save_model

        _structure.refuse_foreign_suffix(path, "model.save", '".fm"')
        save_model(self, path)

    # ------------------------------------------------------------- structure (Keras)
    def get_layer(self, name=None, index=None):
        """The layer called `name`, or at position `index`."""
        return _structure.get_layer(self, name, index)

    def get_config(self) -> dict:
        """The architecture ({"name", "seed", "layers": [layer configs]}); no weights or compile
        settings. fm.Sequential.from_config(config) builds an uncompiled copy."""
        return _structure.get_config(self)

    @classmethod
    def from_config(cls, config) -> "Sequential":
        return _structure.from_config(cls, config)

    def to_json(self, **kwargs) -> str:
        """get_config() as JSON (json.dumps keyword arguments, e.g. indent=2)."""
        return _structure.to_json(self, **kwargs)

    def save_weights(self, path):
        """The weights alone, as a .npz of plain arrays (the name must end in .weights.npz)."""
        _structure.save_weights(self, path)

    def load_weights(self, path):
        """Sets weights save_weights wrote, checked by name and shape against this model."""
        _structure.load_weights(self, path)

    def to_torch(self):
        """A torch.nn.Sequential (eval() mode) computing what predict computes, in this model's
        dtype (fastmlp.export.to_torch; needs torch: pip install 'fastmlp[torch]')."""
        from .export import to_torch

        return to_torch(self)

    def export_onnx(self, path):
        """Writes the model to `path` (ending in .onnx) as an ONNX model that onnxruntime runs to
        predict's outputs, atomically (fastmlp.export.export_onnx; needs pip install 'fastmlp[onnx]')."""
        from .export import export_onnx

        export_onnx(self, path)

    def count_params(self) -> int:
        if self.input_dim is None:
            raise RuntimeError("the model is not built: its input_dim is unknown")
        return int(sum(np.prod(s) for s in self._layer_shapes()))

    def summary(self, print_fn=None):
        """Prints layers, output shapes and parameter counts (trainable and not, as Keras does)."""
        print_fn = print_fn or print
        rows = [("Layer (type)", "Output Shape", "Param #")]
        fan_in, total, trainable = self.input_dim, 0, 0
        counts: dict = {}
        for layer in self.layers:
            kind = type(layer).__name__
            counts[kind] = counts.get(kind, -1) + 1
            name = layer.name or f"{_snake(kind)}_{counts[kind]}"
            act = getattr(layer, "activation", None)
            label = f"{name} ({kind}{', ' + act.name if act is not None else ''})"
            width = layer.output_dim(fan_in) if fan_in is not None else getattr(layer, "units", None)
            n = sum(int(np.prod(s)) for s in layer.weight_shapes(fan_in)) if fan_in is not None else None
            if n is not None:
                total += n
                trainable += layer.trainable_count(fan_in)
            rows.append((label, f"(None, {width if width is not None else '?'})", f"{n:,}" if n is not None else "?"))
            fan_in = width
        widths = [max(len(r[c]) for r in rows) + 2 for c in range(3)]
        line = "=" * sum(widths)
        print_fn(f'Model: "{self.name}"')
        print_fn(line)
        for j, r in enumerate(rows):
            print_fn("".join(col.ljust(w) for col, w in zip(r, widths)))
            print_fn(line if j == 0 else "-" * sum(widths))
        print_fn(f"Total params: {total:,}" + ("" if self.input_dim is not None else " (input_dim unknown)"))
        print_fn(f"Trainable params: {trainable:,}")
        print_fn(f"Non-trainable params: {total - trainable:,}")
        if self._engine is not None:
            print_fn(f"Backend: {self._engine.device}")
        if self._compile_args is not None:
            args = self._compile_args
            print_fn(f"Optimizer: {args['optimizer'].describe()}")
            print_fn(f"Loss: {args['loss']!r}" + (f", metric: {args['metric_key']}" if args["metric_key"] else ""))

    # ------------------------------------------------------- optimizer control
    def set_learning_rate(self, lr: float):
        """Changes the optimizer's base learning rate from the next step on (schedules scale it)."""
        self._require_compiled("set_learning_rate")
        opt = self._compile_args["optimizer"]
        opt.lr = lr
        if self._engine is not None:
            self._engine.set_learning_rate(opt.lr)

    def get_learning_rate(self) -> float:
        self._require_compiled("get_learning_rate")
        return self._compile_args["optimizer"].lr

    def __repr__(self):
        return f"Sequential({self.layers!r}, seed={self.seed})"


__all__ = ["Sequential", "NonFiniteLossError", "cuda_is_available", "resolve_device"]
