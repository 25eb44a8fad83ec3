"""fastmlp.export: to_torch, from_torch and export_onnx (issue 13, "Export").

* to_torch(model) gives a torch.nn.Sequential whose outputs are model.predict's: to 1e-6 in
  float32, 1e-12 in float64 (a float64 module), for every activation (in a Dense and as an
  Activation layer), Dropout, BatchNormalization after training (moving statistics, epsilon,
  momentum 1 - m, center/scale off) and LayerNormalization.
* from_torch(module) gives a compiled fm.Sequential predicting what the module computes in eval()
  mode, for every supported module; fastmlp -> torch -> fastmlp predicts identically. Anything
  else raises TypeError / ValueError naming the module and its index.
* export_onnx(model, path) writes a file onnx.checker accepts and onnxruntime runs to predict's
  outputs (1e-5 in float32, 1e-12 in float64), atomically, and refuses a path not ending in .onnx.
torch, onnx and onnxruntime are optional: their tests skip without them; the rest run anyway.
"""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import export

N_IN = 5
# Absolute for outputs up to 1 in size, relative beyond: two float32 implementations summing in
# different orders differ by a few units in the last place of each output (2.4e-7 at 2, 4.8e-7 at 4).
TOL = {"float32": 1e-6, "float64": 1e-12}
ONNX_TOL = {"float32": 1e-5, "float64": 1e-12}

# every activation fastmlp has, with parameter variants (names fastmlp lacks are skipped)
ACTIVATIONS = [("linear", None), ("sigmoid", None), ("tanh", None), ("relu", None), ("leaky_relu", 0.2),
               ("leaky_relu", 0.0), ("elu", 1.0), ("elu", 0.5), ("softmax", None), ("exponential", None),
               ("softplus", None), ("selu", None), ("gelu", None), ("silu", None)]
ACT_IDS = [name if p is None else f"{name}({p})" for name, p in ACTIVATIONS]


def activation(name, param=None):
    try:
        act = fm.activations.get(name)
    except ValueError:
        pytest.skip(f"this fastmlp has no {name!r} activation")
    return act if param is None else type(act)(param)


def data(rows=64, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, N_IN)).astype(dtype), rng.normal(size=(rows, 3)).astype(dtype)


def compiled(layers, dtype="float32", seed=0, loss="mse"):
    model = fm.Sequential(layers, seed=seed)
    model.compile(optimizer="adam", loss=loss, device="cpu", dtype=dtype)
    return model


def trained(layers, dtype="float32", epochs=3):
    """A model fitted a few epochs, so that weights and moving statistics are not their initial values."""
    model = compiled(layers, dtype)
    x, y = data()
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    return model


def activation_models(name, param):
    """Two models ending in this activation: in a Dense, and as an Activation layer after a Dense
    (softmax is output-only and exp of exp grows large, so the hidden layer then uses tanh)."""
    hidden = activation("tanh") if name in ("softmax", "exponential") else activation(name, param)
    out = activation(name, param)
    return [[fm.Dense(7, hidden, input_dim=N_IN), fm.Dense(3, out)],
            [fm.Dense(7, hidden, input_dim=N_IN), fm.Dense(3), fm.Activation(out)]]


LAYER_STACKS = {
    "batchnorm": lambda: [fm.Dense(8, "relu", input_dim=N_IN), fm.BatchNormalization(momentum=0.9), fm.Dense(3)],
    "batchnorm_first": lambda: [fm.BatchNormalization(0.8, 1e-2, input_dim=N_IN), fm.Dense(3, "tanh")],
    "batchnorm_no_center": lambda: [fm.Dense(8, input_dim=N_IN), fm.BatchNormalization(0.9, center=False),
                                    fm.Activation("relu"), fm.Dense(3)],
    "batchnorm_no_scale": lambda: [fm.Dense(8, input_dim=N_IN), fm.BatchNormalization(0.9, scale=False),
                                   fm.Dense(3)],
    "batchnorm_no_affine": lambda: [fm.Dense(8, input_dim=N_IN), fm.BatchNormalization(0.9, 1e-5, False, False),
                                    fm.Dense(3)],
    "layernorm": lambda: [fm.Dense(8, "elu", input_dim=N_IN), fm.LayerNormalization(), fm.Dense(3, "sigmoid")],
    "layernorm_no_center": lambda: [fm.Dense(8, input_dim=N_IN), fm.LayerNormalization(1e-5, center=False),
                                    fm.Dense(3)],
    "layernorm_no_scale": lambda: [fm.Dense(8, input_dim=N_IN), fm.LayerNormalization(scale=False), fm.Dense(3)],
    "layernorm_no_affine": lambda: [fm.LayerNormalization(center=False, scale=False, input_dim=N_IN), fm.Dense(3)],
    "dropout": lambda: [fm.Dropout(0.2, input_dim=N_IN), fm.Dense(8, "relu"), fm.Dropout(0.5), fm.Dense(3)],
    "everything": lambda: [fm.Dense(8, "relu", input_dim=N_IN), fm.BatchNormalization(), fm.Dropout(0.3),
                           fm.Dense(6, fm.activations.LeakyReLU(0.1)), fm.LayerNormalization(),
                           fm.Activation("elu"), fm.Dense(4), fm.Activation("linear"), fm.Dense(3, "softmax")],
}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def torch_predict(torch, net, x):
    dtype = next(net.parameters()).dtype if list(net.parameters()) else torch.float32
    with torch.no_grad():
        return net(torch.tensor(x, dtype=dtype)).numpy()


def onnx_predict(ort, path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def max_diff(a, b):
    assert a.shape == b.shape
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def close(got, expected, tol):
    """max |got - expected| <= tol * max(1, max |expected|) (see TOL)."""
    scale = max(1.0, float(np.abs(expected).max()))
    return max_diff(got, expected) <= tol * scale


# -------------------------------------------------------------- without the extras


def test_every_fastmlp_activation_is_tested_here():
    names = {cls.name for cls in fm.activations._BY_NAME.values()}  # aliases ("swish") by their class's name
    assert names <= {name for name, _ in ACTIVATIONS}, "add the new activation to ACTIVATIONS and fastmlp.export"


def test_importing_fastmlp_and_export_imports_neither_torch_nor_onnx():
    code = ("import sys, fastmlp, fastmlp.export; "
            "bad = [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]; assert not bad, bad")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


@pytest.mark.parametrize("call, package, extra", [
    (lambda m, p: export.to_torch(m), "torch", "torch"),
    (lambda m, p: export.from_torch(None), "torch", "torch"),
    (lambda m, p: export.export_onnx(m, p), "onnx", "onnx"),
])
def test_a_missing_package_names_the_extra_to_install(monkeypatch, tmp_path, call, package, extra):
    model = compiled([fm.Dense(3, input_dim=N_IN)])
    monkeypatch.setitem(sys.modules, package, None)  # importing it now raises ImportError
    with pytest.raises(ImportError, match=rf"pip install 'fastmlp\[{extra}\]'"):
        call(model, tmp_path / "m.onnx")


@pytest.mark.parametrize("name", ["model", "model.onx", "model.onnx.tmp", "model.pt", ".onnx", "dir/"])
def test_export_onnx_refuses_a_path_not_ending_in_onnx(tmp_path, name):
    model = compiled([fm.Dense(3, input_dim=N_IN)])
    with pytest.raises(ValueError, match=r"must end in '\.onnx'"):
        export.export_onnx(model, str(tmp_path / name) + ("/" if name.endswith("/") else ""))
    assert os.listdir(tmp_path) == []


def test_export_onnx_refuses_a_directory_and_a_non_path(tmp_path):
    model = compiled([fm.Dense(3, input_dim=N_IN)])
    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(IsADirectoryError):
        export.export_onnx(model, tmp_path / "d.onnx")
    with pytest.raises(TypeError, match="str or os.PathLike"):
        export.export_onnx(model, 3)


# ------------------------------------------------------------------------ to_torch


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name, param", ACTIVATIONS, ids=ACT_IDS)
def test_to_torch_matches_predict_for_every_activation(torch, name, param, dtype):
    for layers in activation_models(name, param):
        model = trained(layers, dtype, epochs=1)
        net = export.to_torch(model)
        assert isinstance(net, torch.nn.Sequential) and not net.training
        want = torch.float64 if dtype == "float64" else torch.float32
        assert all(p.dtype == want for p in net.parameters())
        x, _ = data(200, seed=1, dtype=np.dtype(dtype))
        expected = model.predict(x)
        assert np.abs(expected).max() < 20  # the tolerance stays meaningful
        assert close(torch_predict(torch, net, x), expected, TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("stack", sorted(LAYER_STACKS))
def test_to_torch_matches_predict_with_each_layer_kind(torch, stack, dtype):
    model = trained(LAYER_STACKS[stack](), dtype)
    net = export.to_torch(model)
    x, _ = data(200, seed=2, dtype=np.dtype(dtype))
    assert close(torch_predict(torch, net, x), model.predict(x), TOL[dtype])


def test_to_torch_carries_batchnorm_statistics_eps_and_momentum(torch):
    model = trained([fm.Dense(8, "relu", input_dim=N_IN), fm.BatchNormalization(momentum=0.9, epsilon=1e-2),
                     fm.Dropout(0.25), fm.Dense(3)])
    gamma, beta, mean, var = model.get_weights()[2:6]
    assert not np.allclose(mean, 0) and not np.allclose(var, 1)  # training moved them
    net = export.to_torch(model)
    bn, dropout = net[2], net[3]
    assert isinstance(bn, torch.nn.BatchNorm1d) and isinstance(dropout, torch.nn.Dropout)
    assert bn.eps == 1e-2 and bn.momentum == pytest.approx(0.1) and dropout.p == 0.25
    for got, want in [(bn.weight, gamma), (bn.bias, beta), (bn.running_mean, mean), (bn.running_var, var)]:
        np.testing.assert_array_equal(got.detach().numpy(), want)


def test_to_torch_freezes_the_gamma_and_beta_fastmlp_does_not_have(torch):
    model = trained([fm.Dense(4, input_dim=N_IN), fm.BatchNormalization(center=False),
                     fm.LayerNormalization(scale=False), fm.Dense(3)])
    net = export.to_torch(model)
    bn, ln = net[1], net[2]
    assert bn.weight.requires_grad and not bn.bias.requires_grad and (bn.bias == 0).all()
    assert not ln.weight.requires_grad and (ln.weight == 1).all() and ln.bias.requires_grad


def test_to_torch_exponential_module_is_importable_and_pickles(torch):
    model = trained([fm.Dense(4, "exponential", input_dim=N_IN), fm.Dense(3)])
    net = export.to_torch(model)
    assert type(net[1]) is export.Exponential
    again = pickle.loads(pickle.dumps(net))
    x, _ = data(20, dtype=np.float32)
    assert close(torch_predict(torch, again, x), model.predict(x), TOL["float32"])


def test_to_torch_needs_a_built_model(torch):
    model = fm.Sequential([fm.Dense(3)])
    with pytest.raises(RuntimeError, match="no weights"):
        export.to_torch(model)
    with pytest.raises(TypeError, match="fm.Sequential"):
        export.to_torch(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------- from_torch


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("stack", sorted(LAYER_STACKS))
def test_round_trip_fastmlp_torch_fastmlp_predicts_identically(torch, stack, dtype):
    model = trained(LAYER_STACKS[stack](), dtype)
    back = export.from_torch(export.to_torch(model), device="cpu")
    assert back.built and back._compile_args["dtype"] == np.dtype(dtype)
    x, _ = data(100, seed=3, dtype=np.dtype(dtype))
    np.testing.assert_array_equal(back.predict(x), model.predict(x))
    # the same layers, but that an Activation right after a Dense without one joins that Dense and a
    # linear Activation (torch's Identity) goes
    kinds, last = [], None
    for layer in model.layers:
        joins = isinstance(layer, fm.Activation) and (
            layer.activation.name == "linear" or (isinstance(last, fm.Dense) and last.activation.name == "linear"))
        if not joins:
            kinds.append(type(layer))
        last = layer
    assert [type(layer) for layer in back.layers] == kinds
    for a, b in zip(back.layers, model.layers):
        if isinstance(a, (fm.BatchNormalization, fm.LayerNormalization)):
            assert (a.epsilon, a.center, a.scale) == (b.epsilon, b.center, b.scale)
        if isinstance(a, fm.BatchNormalization):
            assert a.momentum == b.momentum


@pytest.mark.parametrize("name, param", ACTIVATIONS, ids=ACT_IDS)
def test_round_trip_of_every_activation(torch, name, param):
    for layers in activation_models(name, param):
        model = trained(layers, epochs=1)
        back = export.from_torch(export.to_torch(model), device="cpu")
        assert back._final_activation == model._final_activation
        x, _ = data(50, seed=4, dtype=np.float32)
        np.testing.assert_array_equal(back.predict(x), model.predict(x))


def run_torch_batches(torch, net, dtype, steps=5):
    """Forward passes in training mode so BatchNorm1d's running statistics move off 0 and 1."""
    net.train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(steps):
            net(torch.randn(32, N_IN, generator=gen, dtype=dtype) * 2 + 1)
    net.eval()


def torch_net(torch, seed=0):
    nn = torch.nn
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(N_IN, 8), nn.ReLU(), nn.BatchNorm1d(8, eps=1e-5, momentum=0.1), nn.Dropout(0.25),
        nn.Linear(8, 7), nn.LeakyReLU(0.1), nn.LayerNorm(7, eps=1e-4), nn.Identity(),
        nn.Sequential(nn.Linear(7, 6), nn.ELU(alpha=0.7)), nn.Linear(6, 6, bias=False), nn.Tanh(),
        nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 4), nn.Identity(), nn.Softmax(dim=1))
    with torch.no_grad():  # gamma and beta away from 1 and 0
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_from_torch_matches_the_module(torch, dtype):
    net = torch_net(torch)
    tdtype = torch.float64 if dtype == "float64" else torch.float32
    net.to(tdtype)
    run_torch_batches(torch, net, tdtype)
    assert not torch.allclose(net[2].running_var, torch.ones(8, dtype=tdtype))
    model = export.from_torch(net, device="cpu")
    assert model.built and model._compile_args["dtype"] == np.dtype(dtype)  # compiled, in the module's dtype
    assert model.loss.name == "sparse_categorical_crossentropy"  # the default for a softmax output
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Dense", "BatchNormalization", "Dropout", "Dense", "LayerNormalization", "Dense", "Dense",
                     "Dense", "Dense"]
    acts = [layer.activation.name for layer in model.layers if isinstance(layer, fm.Dense)]
    assert acts == ["relu", "leaky_relu", "elu", "tanh", "sigmoid", "softmax"]
    bn = model.layers[1]
    assert bn.momentum == pytest.approx(0.9) and bn.epsilon == 1e-5 and bn.center and bn.scale
    assert model.layers[2].rate == 0.25 and model.layers[4].epsilon == 1e-4
    mean = model.get_weights()[4]  # W, b, gamma, beta, moving_mean
    np.testing.assert_allclose(mean, net[2].running_mean.double().numpy(), rtol=1e-6 if dtype == "float32" else 0)
    x, _ = data(300, seed=5, dtype=np.dtype(dtype))
    assert close(model.predict(x), torch_predict(torch, net, x), TOL[dtype])


def test_from_torch_dtype_device_loss_and_compile_arguments(torch):
    nn = torch.nn
    net = nn.Sequential(nn.Linear(N_IN, 4), nn.Tanh(), nn.Linear(4, 1), nn.Sigmoid())
    model = export.from_torch(net, device="cpu")
    assert model.loss.name == "binary_crossentropy" and model._compile_args["dtype"] == np.float32
    model = export.from_torch(net, loss="mse", optimizer=fm.optimizers.SGD(lr=0.1), metrics=["mae"],
                              dtype="float64", device="cpu", seed=7)
    assert model.loss.name == "mse" and model._compile_args["dtype"] == np.float64 and model.seed == 7
    x, _ = data(40, seed=6)
    assert max_diff(model.predict(x), torch_predict(torch, net.double(), x)) <= 1e-12  # the same weights in float64
    model = export.from_torch(net.double())  # float64 module: dtype float64 and, with device "auto", the CPU
    assert model._compile_args["dtype"] == np.float64 and model.device == "cpu"
    model.fit(x, (x[:, :1] > 0).astype(float), epochs=1, verbose=0)  # it trains


def test_from_torch_affine_variants_and_first_layers(torch):
    nn = torch.nn
    torch.manual_seed(1)
    layers = [nn.Dropout(0.1), nn.BatchNorm1d(N_IN, affine=False), nn.Linear(N_IN, 6),
              nn.LayerNorm(6, elementwise_affine=False), nn.ReLU(), nn.Linear(6, 4)]
    try:
        layers += [nn.LayerNorm(4, bias=False)]  # torch >= 2.1
    except TypeError:
        pass
    net = nn.Sequential(*layers)
    run_torch_batches(torch, net, torch.float32)
    model = export.from_torch(net, device="cpu")
    assert model.layers[0].input_dim == N_IN  # taken from the BatchNorm1d after the Dropout
    bn, ln = model.layers[1], model.layers[3]
    assert (bn.center, bn.scale, ln.center, ln.scale) == (False, False, False, False)
    if len(layers) == 7:
        assert (model.layers[-1].center, model.layers[-1].scale) == (False, True)
    x, _ = data(100, seed=7, dtype=np.float32)
    assert close(model.predict(x), torch_predict(torch, net, x), TOL["float32"])


def unsupported_cases(nn):
    return [
        (nn.Sequential(nn.Linear(N_IN, 4), nn.Conv1d(1, 1, 1)), TypeError, r"module 1 \(Conv1d"),
        (nn.Sequential(nn.Linear(N_IN, 4), nn.ReLU6()), TypeError, r"module 1 \(ReLU6"),
        (nn.Sequential(nn.Linear(N_IN, 4), nn.Sequential(nn.ReLU(), nn.Hardswish())), TypeError,
         r"module 1\.1 \(Hardswish"),
        (nn.Sequential(nn.Linear(N_IN, 4), nn.PReLU()), TypeError, r"module 1 \(PReLU"),
        (nn.Sequential(nn.Linear(N_IN, 4), nn.Softmax(dim=0)), ValueError, r"module 1 \(Softmax.*dim=-1"),
        (nn.Sequential(nn.Linear(N_IN, 4), nn.Softmax(dim=None)), ValueError, r"module 1 \(Softmax"),
        (nn.Sequential(nn.Linear(N_IN, 4), nn.Softmax(-1), nn.Linear(4, 2)), ValueError,
         r"module 1 \(Softmax.*last activation"),
        (nn.Sequential(nn.Linear(N_IN, 4), nn.LeakyReLU(-0.1)), ValueError, r"module 1 \(LeakyReLU.*slope"),
        (nn.Sequential(nn.Linear(N_IN, 4), nn.BatchNorm1d(4, momentum=None)), ValueError,
         r"module 1 \(BatchNorm1d.*momentum=None"),
        (nn.Sequential(nn.Linear(N_IN, 4), nn.BatchNorm1d(4, track_running_stats=False)), ValueError,
         r"module 1 \(BatchNorm1d.*running statistics"),
        (nn.Sequential(nn.Linear(N_IN, 4), nn.BatchNorm2d(4)), TypeError, r"module 1 \(BatchNorm2d"),
        (nn.Sequential(nn.Linear(N_IN, 4), nn.LayerNorm((2, 2))), ValueError, r"module 1 \(LayerNorm.*last"),
        (nn.Sequential(nn.Linear(N_IN, 4), nn.Linear(3, 2)), ValueError, r"module 1 \(Linear.*expects 3"),
        (nn.Sequential(nn.Linear(N_IN, 4), nn.GELU(approximate="tanh")), ValueError, r"module 1 \(GELU"),
        (nn.Sequential(nn.Linear(N_IN, 4), nn.Softplus(beta=2.0)), ValueError, r"module 1 \(Softplus"),
        (nn.Sequential(nn.Identity()), ValueError, "no Linear"),
        (nn.Sequential(nn.BatchNorm1d(3), nn.ReLU()), ValueError, "no Linear"),
        (nn.Linear(N_IN, 4), TypeError, "torch.nn.Sequential"),
    ]


def test_from_torch_refuses_what_it_cannot_reproduce_naming_module_and_index(torch):
    for net, exc, pattern in unsupported_cases(torch.nn):
        with pytest.raises(exc, match=pattern):
            export.from_torch(net, device="cpu")


def test_from_torch_refuses_a_subclass_it_does_not_know(torch):
    class MyReLU(torch.nn.ReLU):  # its forward may be anything
        def forward(self, x):
            return x * 2

    with pytest.raises(TypeError, match=r"module 1 \(MyReLU"):
        export.from_torch(torch.nn.Sequential(torch.nn.Linear(N_IN, 2), MyReLU()), device="cpu")


# -------------------------------------------------------------------------- ONNX


def check_onnx_file(path, model):
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [export.ONNX_OPSET]
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["output"]
    ops = {n.op_type for n in proto.graph.node}
    assert "Dropout" not in ops
    return ops


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name, param", ACTIVATIONS, ids=ACT_IDS)
def test_onnxruntime_matches_predict_for_every_activation(ort, tmp_path, name, param, dtype):
    for k, layers in enumerate(activation_models(name, param)):
        model = trained(layers, dtype, epochs=1)
        path = tmp_path / f"m{k}.onnx"
        export.export_onnx(model, path)
        check_onnx_file(path, model)
        x, _ = data(200, seed=8, dtype=np.dtype(dtype))
        got = onnx_predict(ort, path, x)
        assert got.dtype == np.dtype(dtype)
        # onnxruntime has Erf in float32 only: float64 GELU is float32-accurate
        tol = 1e-6 if (name == "gelu" and dtype == "float64") else ONNX_TOL[dtype]
        assert close(got, model.predict(x), tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("stack", sorted(LAYER_STACKS))
def test_onnxruntime_matches_predict_with_each_layer_kind(ort, tmp_path, stack, dtype):
    model = trained(LAYER_STACKS[stack](), dtype)
    path = tmp_path / "model.onnx"
    export.export_onnx(model, str(path))
    ops = check_onnx_file(path, model)
    if stack.startswith("batchnorm"):
        assert "BatchNormalization" in ops
    if stack == "layernorm" and dtype == "float32":
        assert "LayerNormalization" in ops
    x, _ = data(200, seed=9, dtype=np.dtype(dtype))
    assert close(onnx_predict(ort, path, x), model.predict(x), ONNX_TOL[dtype])


def test_export_onnx_uses_gemm_and_the_named_ops(ort, tmp_path):
    model = trained([fm.Dense(6, "relu", input_dim=N_IN), fm.Dense(6, "sigmoid"), fm.Dense(6, "tanh"),
                     fm.Dense(6, fm.activations.LeakyReLU(0.3)), fm.Dense(6, "elu"), fm.Dense(6, "exponential"),
                     fm.BatchNormalization(), fm.Dense(3, "softmax")])
    path = tmp_path / "m.onnx"
    export.export_onnx(model, path)
    ops = check_onnx_file(path, model)
    assert {"Gemm", "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Exp", "BatchNormalization", "Softmax"} <= ops


def test_export_onnx_only_dropout_and_linear_layers(ort, tmp_path):
    model = trained([fm.Dropout(0.5, input_dim=N_IN), fm.Dense(3), fm.Activation("linear")])
    path = tmp_path / "linear.onnx"
    export.export_onnx(model, path)
    assert check_onnx_file(path, model) == {"Gemm"}
    x, _ = data(10, dtype=np.float32)
    assert max_diff(onnx_predict(ort, path, x), model.predict(x)) <= 1e-5


def test_export_onnx_replaces_atomically_and_leaves_nothing_on_failure(ort, tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    model = trained([fm.Dense(4, "relu", input_dim=N_IN), fm.Dense(3)])
    path.write_bytes(b"old")
    export.export_onnx(model, path)
    assert os.listdir(tmp_path) == ["model.onnx"] and path.read_bytes() != b"old"
    x, _ = data(10, dtype=np.float32)
    assert max_diff(onnx_predict(ort, path, x), model.predict(x)) <= 1e-5
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="no weights"):  # nothing to export: the old file stays
        export.export_onnx(fm.Sequential([fm.Dense(3)]), path)

    def failing_write(f):
        raise OSError("disk full")

    real_write_atomic = export.write_atomic
    monkeypatch.setattr(export, "write_atomic", lambda target, write: real_write_atomic(target, failing_write))
    with pytest.raises(OSError, match="disk full"):  # fails mid-write: the temporary file goes
        export.export_onnx(model, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.onnx"]


def test_onnx_of_a_from_torch_model_matches_torch(torch, ort, tmp_path):
    net = torch_net(torch, seed=3)
    run_torch_batches(torch, net, torch.float32)
    model = export.from_torch(net, device="cpu")
    path = tmp_path / "from_torch.onnx"
    export.export_onnx(model, path)
    x, _ = data(100, seed=10, dtype=np.float32)
    assert max_diff(onnx_predict(ort, path, x), torch_predict(torch, net, x)) <= 1e-5


def test_public_api_delegates_to_export(torch, ort, tmp_path):
    # model.to_torch(), model.export_onnx(path) and fm.from_torch(module) are the user-facing names.
    m = fm.Sequential([fm.Dense(4, "gelu", input_dim=N_IN), fm.Dense(3, "softmax")], seed=1)
    m.compile("adam", "sparse_categorical_crossentropy", device="cpu")
    x = np.random.default_rng(0).normal(size=(6, N_IN)).astype(np.float32)
    net = m.to_torch()
    np.testing.assert_allclose(torch_predict(torch, net, x), m.predict(x), atol=1e-6)
    np.testing.assert_array_equal(fm.from_torch(net, device="cpu").predict(x), m.predict(x))
    m.export_onnx(tmp_path / "m.onnx")
    out = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {ort.InferenceSession(
        str(tmp_path / "m.onnx")).get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(out, m.predict(x), atol=1e-5)
