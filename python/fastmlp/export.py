"""Moving models to and from PyTorch, and out to ONNX.

    net = fastmlp.export.to_torch(model)           # torch.nn.Sequential, in eval() mode
    model = fastmlp.export.from_torch(net)         # a compiled fm.Sequential with net's weights
    fastmlp.export.export_onnx(model, "model.onnx")

to_torch(model)
    A torch.nn.Sequential computing what model.predict computes (float32 modules for a float32
    model, float64 ones for a float64 model), returned in eval() mode: Dropout passes values on and
    BatchNorm1d uses the moving statistics, as predict does. Dense -> Linear (+ its activation
    module), Dropout -> Dropout, BatchNormalization -> BatchNorm1d (running statistics, eps, and
    momentum 1 - Keras momentum), LayerNormalization -> LayerNorm, Activation -> its module. A
    gamma or beta that fastmlp does not have (scale=False / center=False) becomes a constant 1 / 0
    parameter with requires_grad=False. The "exponential" activation, for which torch has no
    module, becomes fastmlp.export.Exponential (a torch.nn.Module; importable, so picklable).
    Calling .train() on the result trains it the torch way: torch's BatchNorm1d updates its
    running variance with the unbiased batch variance where fastmlp (like Keras) uses the biased one.

from_torch(module, loss=None, optimizer="adam", metrics=None, *, dtype=None, device="auto", seed=None)
    A COMPILED fm.Sequential with the module's weights (a fastmlp model holds weights only once
    compiled). The module is read as in eval() mode. loss None picks one that fits the output:
    "sparse_categorical_crossentropy" after Softmax, "binary_crossentropy" after Sigmoid, "mse"
    otherwise; compile the model again to change it (recompiling keeps the weights).
    dtype None: float64 when the module has float64 parameters, float32 otherwise; device "auto"
    means "cpu" for float64 (fastmlp's only float64 backend). Supported modules (nested
    nn.Sequential is flattened): Linear, ReLU, Sigmoid, Tanh, LeakyReLU, ELU, Softmax(dim=-1 or 1,
    only as the last activation), Identity (dropped), Dropout, BatchNorm1d (with running
    statistics and a numeric momentum), LayerNorm over the last dimension, Exponential (above),
    and Softplus, SELU, GELU(approximate="none"), SiLU where this fastmlp has those activations.
    An activation module right after a Linear becomes that Dense's activation. Any other module,
    or a setting fastmlp cannot reproduce, raises TypeError / ValueError naming the module and its
    index in the Sequential ("2" or, nested, "1.0").

export_onnx(model, path)
    Writes an ONNX model (opset 17 with IR version 8, not the newest, so older runtimes load it) with one
    input "input" of shape (batch, input_dim) and one output "output", in the model's dtype,
    checked with onnx.checker, to a path ending in .onnx, atomically (fastmlp._atomic_write).
    Dense -> Gemm, activations -> Relu / Sigmoid / Tanh / LeakyRelu / Elu / Softmax / Exp (float64
    leaky ReLU, ELU, SELU and softplus are written with elementary ops, as onnxruntime has no float64
    Elu and ONNX's float32 attributes would round a float64 slope or alpha;
    float64 GELU computes its Erf in float32, which is all onnxruntime has), BatchNormalization ->
    BatchNormalization in inference form, LayerNormalization -> LayerNormalization (float64: written
    out with ReduceMean, as ONNX's float32 epsilon attribute would cost float64 models ~1e-9);
    Dropout is left out (inference). onnxruntime matches predict to ~1e-7 (float32) and ~1e-15
    (float64).

torch and onnx are imported only when these functions run; `pip install fastmlp[torch]` or
`pip install fastmlp[onnx]` installs them.
"""
from __future__ import annotations

import importlib
import math
import os

import numpy as np

from . import activations as _activations
from . import layers as _layers
from ._atomic_write import write_atomic

ONNX_OPSET = 17  # LayerNormalization needs 17; written with IR version 8 so that older runtimes load it
_SOFTPLUS_MIN_THRESHOLD = 20.0  # torch Softplus returns z above it: off by at most log1p(e^-20) = 2.1e-9
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _require(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"this needs the {module!r} package: pip install 'fastmlp[{extra}]' "
                          f"(or pip install {module})") from exc


# ------------------------------------------------------------------------ shared


def _dtype_of(model) -> np.dtype:
    args = getattr(model, "_compile_args", None)
    return np.dtype(args["dtype"]) if args else np.dtype(np.float32)


def _walk(model):
    """(index, layer, {weight name: array}, fan_in) for each layer of a built model."""
    from .models import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"expected an fm.Sequential, got {type(model).__name__}")
    weights = model.get_weights()  # RuntimeError naming the problem when the model is not built
    fan_in, at = model.input_dim, 0
    for i, layer in enumerate(model.layers):
        names = layer.weight_names()
        yield i, layer, dict(zip(names, weights[at:at + len(names)])), fan_in
        at += len(names)
        fan_in = layer.output_dim(fan_in)


def _describe(layer) -> str:
    return f"{type(layer).__name__} {layer!r}"


def _affine(weights: dict, width: int, dtype):
    """(gamma, beta) of a normalization layer, with 1 / 0 for the ones it does not have."""
    gamma = weights.get("gamma", np.ones(width, dtype))
    beta = weights.get("beta", np.zeros(width, dtype))
    return np.asarray(gamma, dtype), np.asarray(beta, dtype)


# ------------------------------------------------------------------------ torch

_TORCH_CLASSES: dict = {}


def _exponential_class():
    """fastmlp.export.Exponential: exp(x) as a torch module, made when torch is first needed."""
    cls = _TORCH_CLASSES.get("Exponential")
    if cls is None:
        torch = _require("torch", "torch")

        class Exponential(torch.nn.Module):
            """exp(x) element-wise: fastmlp's "exponential" activation (torch has no module for it)."""

            def forward(self, x):
                return torch.exp(x)

        Exponential.__module__ = __name__
        Exponential.__qualname__ = "Exponential"
        cls = _TORCH_CLASSES["Exponential"] = Exponential
    return cls


def __getattr__(name):
    if name == "Exponential":  # torch is imported here, not by `import fastmlp.export`
        return _exponential_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _torch_activation(act, torch_dtype, where: str):
    """The torch module computing fastmlp activation `act` (None for linear)."""
    import torch

    nn = torch.nn
    name = act.name
    if name == "linear":
        return None
    simple = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "selu": nn.SELU, "silu": nn.SiLU}
    if name in simple:
        return simple[name]()
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope=float(act.param))
    if name == "elu":
        return nn.ELU(alpha=float(act.param))
    if name == "softmax":
        return nn.Softmax(dim=-1)
    if name == "exponential":
        return _exponential_class()()
    if name == "gelu":
        return nn.GELU(approximate="none")
    if name == "softplus":  # torch returns z above the threshold; float64 needs a higher one
        return nn.Softplus(beta=1.0, threshold=40.0 if torch_dtype == torch.float64 else 20.0)
    raise ValueError(f"{where}: activation {name!r} has no PyTorch equivalent in fastmlp.export")


def _set_affine(torch, module, layer, w, fan_in, np_dtype, dtype):
    """A normalization module's weight and bias from the layer's gamma and beta (a constant 1 / 0
    torch does not train where fastmlp has none)."""
    gamma, beta = _affine(w, fan_in, np_dtype)
    as_tensor = lambda a: torch.tensor(a, dtype=dtype)  # noqa: E731
    module.weight = torch.nn.Parameter(as_tensor(gamma)) if layer.scale else _frozen(torch, gamma, dtype)
    module.bias = torch.nn.Parameter(as_tensor(beta)) if layer.center else _frozen(torch, beta, dtype)


def _frozen(torch, values, dtype):
    return torch.nn.Parameter(torch.tensor(values, dtype=dtype), requires_grad=False)


def to_torch(model):
    """A torch.nn.Sequential (eval() mode) whose outputs are model.predict's; see the module doc."""
    torch = _require("torch", "torch")
    nn = torch.nn
    np_dtype = _dtype_of(model)
    dtype = torch.float64 if np_dtype == np.float64 else torch.float32

    def tensor(a):
        return torch.tensor(np.asarray(a, np_dtype), dtype=dtype)

    modules = []
    for i, layer, w, fan_in in _walk(model):
        where = f"layer {i} ({_describe(layer)})"
        if isinstance(layer, _layers.Dense):
            linear = nn.Linear(fan_in, layer.units, bias=True, dtype=dtype)
            with torch.no_grad():
                linear.weight.copy_(tensor(w["kernel"].T))
                linear.bias.copy_(tensor(w["bias"]))
            modules.append(linear)
            act = _torch_activation(layer.activation, dtype, where)
            if act is not None:
                modules.append(act)
        elif isinstance(layer, _layers.Dropout):
            modules.append(nn.Dropout(p=layer.rate))
        elif isinstance(layer, _layers.BatchNormalization):
            affine = layer.center or layer.scale
            bn = nn.BatchNorm1d(fan_in, eps=layer.epsilon, momentum=1.0 - layer.momentum, affine=affine,
                                track_running_stats=True, dtype=dtype)
            with torch.no_grad():
                bn.running_mean.copy_(tensor(w["moving_mean"]))
                bn.running_var.copy_(tensor(w["moving_variance"]))
            if affine:
                _set_affine(torch, bn, layer, w, fan_in, np_dtype, dtype)
            modules.append(bn)
        elif isinstance(layer, _layers.LayerNormalization):
            affine = layer.center or layer.scale
            ln = nn.LayerNorm(fan_in, eps=layer.epsilon, elementwise_affine=affine, dtype=dtype)
            if affine:
                _set_affine(torch, ln, layer, w, fan_in, np_dtype, dtype)
            modules.append(ln)
        elif isinstance(layer, _layers.Activation):
            act = _torch_activation(layer.activation, dtype, where)
            modules.append(nn.Identity() if act is None else act)
        else:
            raise TypeError(f"to_torch: {where} has no PyTorch equivalent in fastmlp.export")
    net = nn.Sequential(*modules)
    net.eval()
    return net


def _flatten(module, prefix=""):
    import torch

    for name, child in module.named_children():
        index = f"{prefix}{name}"
        if type(child) is torch.nn.Sequential:
            yield from _flatten(child, index + ".")
        else:
            yield index, child


def _numpy(t):
    return t.detach().to("cpu").double().numpy()


def _fm_activation(name, where, param=None):
    try:
        act = _activations.get(name)
    except (ValueError, TypeError):
        raise ValueError(f"from_torch: {where} needs fastmlp's {name!r} activation, which this version of "
                         "fastmlp does not have") from None
    if param is not None:
        try:
            act = type(act)(param)
        except ValueError as exc:
            raise ValueError(f"from_torch: {where}: {exc}") from None
    return act


def _activation_of(mod, where):
    """The fastmlp activation a torch activation module computes, or None when `mod` is not one."""
    import torch

    nn = torch.nn
    kind = type(mod)
    simple = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.SELU: "selu", nn.SiLU: "silu"}
    if kind in simple:
        return _fm_activation(simple[kind], where)
    if kind is nn.LeakyReLU:
        return _fm_activation("leaky_relu", where, float(mod.negative_slope))
    if kind is nn.ELU:
        return _fm_activation("elu", where, float(mod.alpha))
    if kind is nn.Softmax:
        if mod.dim not in (-1, 1):
            raise ValueError(f"from_torch: {where}: fastmlp's softmax runs over the features of each row; "
                             f"use dim=-1 (or 1), got dim={mod.dim!r}")
        return _fm_activation("softmax", where)
    if kind is nn.GELU:
        if mod.approximate != "none":
            raise ValueError(f"from_torch: {where}: fastmlp's gelu is the exact (erf) one; "
                             f"approximate={mod.approximate!r} is not supported")
        return _fm_activation("gelu", where)
    if kind is nn.Softplus:
        if float(mod.beta) != 1.0 or not float(mod.threshold) >= _SOFTPLUS_MIN_THRESHOLD:
            raise ValueError(f"from_torch: {where}: fastmlp's softplus is log(1 + e^z): beta must be 1 and "
                             f"threshold >= {_SOFTPLUS_MIN_THRESHOLD:g}, got beta={mod.beta}, "
                             f"threshold={mod.threshold}")
        return _fm_activation("softplus", where)
    if "Exponential" in _TORCH_CLASSES and kind is _TORCH_CLASSES["Exponential"]:
        return _fm_activation("exponential", where)
    return None


def _trained(param, constant: float) -> bool:
    """Whether an affine parameter is a real one: present and not a frozen constant (what to_torch
    writes for scale=False / center=False)."""
    if param is None:
        return False
    return bool(param.requires_grad) or not bool((param.detach() == constant).all())


_SUPPORTED = ("Linear, ReLU, Sigmoid, Tanh, LeakyReLU, ELU, Softmax, Identity, Dropout, BatchNorm1d, LayerNorm, "
              "fastmlp.export.Exponential, and Softplus, SELU, GELU, SiLU where fastmlp has them")


def _default_loss(model) -> str:
    out = model._final_activation.name
    return {"softmax": "sparse_categorical_crossentropy", "sigmoid": "binary_crossentropy"}.get(out, "mse")


def from_torch(module, loss=None, optimizer="adam", metrics=None, *, dtype=None, device="auto", seed=None):
    """A compiled fm.Sequential computing what torch.nn.Sequential `module` computes in eval() mode;
    see the module doc."""
    torch = _require("torch", "torch")
    nn = torch.nn
    from .models import Sequential

    if not isinstance(module, nn.Sequential):
        raise TypeError(f"from_torch takes a torch.nn.Sequential, got {type(module).__name__}")
    children = list(_flatten(module))

    if dtype is None:
        floats = [p.dtype for p in list(module.parameters()) + list(module.buffers()) if p.is_floating_point()]
        dtype = "float64" if torch.float64 in floats else "float32"
    if dtype not in ("float32", "float64", np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    dtype = np.dtype(dtype)
    if device in (None, "auto") and dtype == np.float64:
        device = "cpu"

    layers, weights, origin = [], [], []  # origin: the torch index each fastmlp layer came from
    width = first_width = None  # the current width (None while unknown) and the model's input width
    open_dense = None  # a Dense without activation that the next activation module may join
    index = mod = where = None  # the module being read, for take and check_width

    def take(layer, arrays, units):
        nonlocal width
        layers.append(layer)
        weights.extend(arrays)
        origin.append((index, mod))
        width = units

    def check_width(n, what):
        if width is not None and n != width:
            raise ValueError(f"from_torch: {where} expects {n} {what} but the previous module outputs {width}")

    for index, mod in children:
        where = f"module {index} ({type(mod).__name__}: {mod!r})"
        if first_width is None:  # the input width: the first module that knows it
            if type(mod) is nn.Linear:
                first_width = int(mod.in_features)
            elif type(mod) is nn.BatchNorm1d:
                first_width = int(mod.num_features)
            elif type(mod) is nn.LayerNorm and len(mod.normalized_shape) == 1:
                first_width = int(mod.normalized_shape[0])

        if type(mod) is nn.Linear:
            check_width(int(mod.in_features), "input features")
            w = _numpy(mod.weight).T
            b = _numpy(mod.bias) if mod.bias is not None else np.zeros(mod.out_features)
            dense = _layers.Dense(int(mod.out_features))
            take(dense, [w, b], int(mod.out_features))
            open_dense = dense
            continue
        if type(mod) is nn.Identity:
            continue
        act = _activation_of(mod, where)
        if act is not None:
            if open_dense is not None:
                open_dense.activation = act
                origin[-1] = (index, mod)
            else:
                take(_layers.Activation(act), [], width)
            open_dense = None
            continue
        open_dense = None
        if type(mod) is nn.Dropout:
            take(_layers.Dropout(float(mod.p)), [], width)
        elif type(mod) is nn.BatchNorm1d:
            check_width(int(mod.num_features), "features")
            if not mod.track_running_stats or mod.running_mean is None:
                raise ValueError(f"from_torch: {where} has no running statistics (track_running_stats=False); "
                                 "fastmlp's BatchNormalization predicts with moving statistics")
            if mod.momentum is None:
                raise ValueError(f"from_torch: {where} uses momentum=None (a cumulative average), which has no "
                                 "Keras-style equivalent; give it a numeric momentum")
            scale, center = _trained(mod.weight, 1.0), _trained(mod.bias, 0.0)
            try:
                bn = _layers.BatchNormalization(momentum=1.0 - float(mod.momentum), epsilon=float(mod.eps),
                                                center=center, scale=scale)
            except ValueError as exc:
                raise ValueError(f"from_torch: {where}: {exc}") from None
            arrays = ([_numpy(mod.weight)] if scale else []) + ([_numpy(mod.bias)] if center else [])
            take(bn, arrays + [_numpy(mod.running_mean), _numpy(mod.running_var)], int(mod.num_features))
        elif type(mod) is nn.LayerNorm:
            if len(mod.normalized_shape) != 1:
                raise ValueError(f"from_torch: {where}: fastmlp normalizes over the last dimension only; "
                                 f"normalized_shape must have one entry, got {tuple(mod.normalized_shape)}")
            n = int(mod.normalized_shape[0])
            check_width(n, "features")
            weight = mod.weight if mod.elementwise_affine else None
            bias = getattr(mod, "bias", None) if mod.elementwise_affine else None
            scale, center = _trained(weight, 1.0), _trained(bias, 0.0)
            try:
                ln = _layers.LayerNormalization(epsilon=float(mod.eps), center=center, scale=scale)
            except ValueError as exc:
                raise ValueError(f"from_torch: {where}: {exc}") from None
            take(ln, ([_numpy(weight)] if scale else []) + ([_numpy(bias)] if center else []), n)
        else:
            raise TypeError(f"from_torch: {where} is not supported; supported modules: {_SUPPORTED}")

    if not any(isinstance(layer, _layers.Dense) for layer in layers):
        raise ValueError("from_torch: the module has no Linear; a fastmlp model needs at least one Dense layer")
    for layer, (index, mod) in zip(layers[:-1], origin[:-1]):
        if getattr(layer.final_activation, "name", None) == "softmax":
            raise ValueError(f"from_torch: module {index} ({type(mod).__name__}): fastmlp supports softmax only as "
                             "the model's last activation")
    layers[0].input_dim = first_width
    model = Sequential(layers, seed=seed)
    model.compile(optimizer=optimizer, loss=_default_loss(model) if loss is None else loss, metrics=metrics,
                  device=device, dtype=dtype.name)
    model.set_weights(weights)
    return model


# ------------------------------------------------------------------------- ONNX


def _onnx_graph(model, helper, numpy_helper, TensorProto):
    np_dtype = _dtype_of(model)
    double = np_dtype == np.float64
    elem = TensorProto.DOUBLE if double else TensorProto.FLOAT
    nodes, inits = [], []
    state = {"cur": "input", "n": 0}

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np_dtype), name))
        return name

    def node(op, inputs, prefix, **attrs):
        state["n"] += 1
        out = f"{prefix}_{op.lower()}{state['n']}"
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def activation(act, x, prefix, where):
        name, p = act.name, float(act.param)

        def elu_part(alpha):  # max(z, 0) + alpha * (e^min(z, 0) - 1): no overflow, exact for z > 0
            neg = node("Min", [x, const(f"{prefix}_zero", 0.0)], prefix)
            em1 = node("Sub", [node("Exp", [neg], prefix), const(f"{prefix}_one", 1.0)], prefix)
            return node("Add", [node("Relu", [x], prefix), node("Mul", [em1, const(f"{prefix}_alpha", alpha)], prefix)],
                        prefix)

        if name == "linear":
            return x
        if name in ("relu", "sigmoid", "tanh"):
            return node({"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}[name], [x], prefix)
        if name == "leaky_relu":  # float64: max(z, 0) + slope * min(z, 0), the slope kept float64
            if double:
                neg = node("Min", [x, const(f"{prefix}_zero", 0.0)], prefix)
                return node("Add", [node("Relu", [x], prefix), node("Mul", [neg, const(f"{prefix}_slope", p)], prefix)],
                            prefix)
            return node("LeakyRelu", [x], prefix, alpha=p)
        if name == "elu":
            return elu_part(p) if double else node("Elu", [x], prefix, alpha=p)
        if name == "softmax":
            return node("Softmax", [x], prefix, axis=-1)
        if name == "exponential":
            return node("Exp", [x], prefix)
        if name == "selu":
            return node("Mul", [elu_part(_SELU_ALPHA), const(f"{prefix}_scale", _SELU_SCALE)], prefix)
        if name == "softplus":  # max(z, 0) + log(1 + e^-|z|)
            e = node("Exp", [node("Neg", [node("Abs", [x], prefix)], prefix)], prefix)
            log = node("Log", [node("Add", [e, const(f"{prefix}_one", 1.0)], prefix)], prefix)
            return node("Add", [node("Relu", [x], prefix), log], prefix)
        if name == "silu":
            return node("Mul", [x, node("Sigmoid", [x], prefix)], prefix)
        if name == "gelu":  # 0.5 z (1 + erf(z / sqrt 2)); onnxruntime has Erf in float32 only
            scaled = node("Mul", [x, const(f"{prefix}_rsqrt2", 1.0 / math.sqrt(2.0))], prefix)
            if double:
                scaled = node("Cast", [scaled], prefix, to=TensorProto.FLOAT)
            erf = node("Erf", [scaled], prefix)
            if double:
                erf = node("Cast", [erf], prefix, to=TensorProto.DOUBLE)
            half = node("Mul", [x, const(f"{prefix}_half", 0.5)], prefix)
            return node("Mul", [half, node("Add", [erf, const(f"{prefix}_one", 1.0)], prefix)], prefix)
        raise ValueError(f"export_onnx: {where}: activation {name!r} has no ONNX form in fastmlp.export")

    out_width = None
    for i, layer, w, fan_in in _walk(model):
        prefix, where = f"layer{i}", f"layer {i} ({_describe(layer)})"
        x = state["cur"]
        if isinstance(layer, _layers.Dense):
            z = node("Gemm", [x, const(f"{prefix}_kernel", w["kernel"]), const(f"{prefix}_bias", w["bias"])], prefix)
            state["cur"] = activation(layer.activation, z, prefix, where)
        elif isinstance(layer, _layers.Dropout):
            pass  # inference: values pass on
        elif isinstance(layer, _layers.BatchNormalization):
            gamma, beta = _affine(w, fan_in, np_dtype)
            eps32 = float(np.float32(layer.epsilon))  # ONNX float attributes are float32
            # float64: var + (eps - eps32) + eps32 is var + eps to float64 rounding
            var = w["moving_variance"] + (layer.epsilon - eps32) if double else w["moving_variance"]
            state["cur"] = node("BatchNormalization",
                                [x, const(f"{prefix}_gamma", gamma), const(f"{prefix}_beta", beta),
                                 const(f"{prefix}_moving_mean", w["moving_mean"]),
                                 const(f"{prefix}_moving_variance", var)],
                                prefix, epsilon=eps32)
        elif isinstance(layer, _layers.LayerNormalization):
            gamma, beta = _affine(w, fan_in, np_dtype)
            gamma, beta = const(f"{prefix}_gamma", gamma), const(f"{prefix}_beta", beta)
            if double:  # written out, so that epsilon stays float64 (an attribute would be float32)
                d = node("Sub", [x, node("ReduceMean", [x], prefix, axes=[-1], keepdims=1)], prefix)
                var = node("ReduceMean", [node("Mul", [d, d], prefix)], prefix, axes=[-1], keepdims=1)
                std = node("Sqrt", [node("Add", [var, const(f"{prefix}_epsilon", layer.epsilon)], prefix)], prefix)
                normalized = node("Div", [d, std], prefix)
                state["cur"] = node("Add", [node("Mul", [normalized, gamma], prefix), beta], prefix)
            else:
                state["cur"] = node("LayerNormalization", [x, gamma, beta], prefix, axis=-1,
                                    epsilon=float(layer.epsilon))
        elif isinstance(layer, _layers.Activation):
            state["cur"] = activation(layer.activation, x, prefix, where)
        else:
            raise TypeError(f"export_onnx: {where} has no ONNX form in fastmlp.export")
        out_width = layer.output_dim(fan_in)
    # the graph's output is named "output": rename the last node's output, or copy the input through
    if nodes and nodes[-1].output[0] == state["cur"]:
        nodes[-1].output[0] = "output"
    else:
        nodes.append(helper.make_node("Identity", [state["cur"]], ["output"], name="output_identity"))
    inputs = [helper.make_tensor_value_info("input", elem, ["batch", model.input_dim])]
    outputs = [helper.make_tensor_value_info("output", elem, ["batch", out_width])]
    return helper.make_graph(nodes, model.name or "fastmlp", inputs, outputs, inits)


def export_onnx(model, path) -> None:
    """Writes `model` (built) to `path` (ending in .onnx) as an ONNX model; see the module doc."""
    try:
        fspath = os.fspath(path)
    except TypeError:
        fspath = None
    if not isinstance(fspath, str):
        raise TypeError(f"the ONNX path must be a str or os.PathLike, got {type(path).__name__}")
    path = fspath
    if not path.lower().endswith(".onnx") or os.path.basename(path).lower() == ".onnx":
        raise ValueError(f"export_onnx writes an ONNX file: the path must end in '.onnx', got {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write the ONNX model to {path!r}: it names a directory")
    onnx = _require("onnx", "onnx")
    from onnx import TensorProto, helper, numpy_helper

    from . import __version__

    graph = _onnx_graph(model, helper, numpy_helper, TensorProto)
    opset = helper.make_opsetid("", ONNX_OPSET)
    proto = helper.make_model(graph, opset_imports=[opset], producer_name="fastmlp", producer_version=__version__)
    proto.ir_version = helper.find_min_ir_version_for([opset])  # not the newest: older runtimes load it
    if proto.ByteSize() >= 2 ** 31:
        raise ValueError("the model's weights are too large for one ONNX file (protobuf's 2 GiB limit)")
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    write_atomic(path, lambda f: f.write(data))


__all__ = ["to_torch", "from_torch", "export_onnx", "ONNX_OPSET"]
