"""CUDA backend: agreement with the CPU backend, gradients, odd sizes, errors, learning.

Runs on a machine with an NVIDIA GPU and skips elsewhere (CI has none). Agreement bounds are
the issue's: relative difference of the weights <= 1e-5 after one step, <= 1e-4 after 50, from
identical weights and batches, in float32.
"""
import itertools
import os
from pathlib import Path

import numpy as np
import pytest

import fastmlp as fm

gpu = pytest.mark.skipif(not fm.cuda_is_available(),
                         reason="no usable CUDA GPU: " + fm.build_info()["cuda_reason"][:200])


def test_build_info_describes_cuda_either_way():
    info = fm.build_info()
    assert isinstance(info["cuda_compiled"], bool)
    if not info["cuda_available"]:
        assert info["cuda_reason"], "an unavailable CUDA backend must say why"
        with pytest.raises(RuntimeError, match="CUDA"):
            m = fm.Sequential([fm.Dense(2, input_dim=2)], seed=0)
            m.compile(loss="mse", device="cuda")
    else:
        assert info["cuda_devices"]


def rel(a, b):
    a = np.concatenate([w.ravel() for w in a]).astype(np.float64)
    b = np.concatenate([w.ravel() for w in b]).astype(np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def make_pair(layers, loss, optimizer, seed=0, metrics=None):
    models = []
    for device in ("cpu", "cuda"):
        m = fm.Sequential([fm.Dense(**spec) for spec in layers], seed=seed)
        m.compile(optimizer=optimizer() if callable(optimizer) else optimizer, loss=loss, metrics=metrics,
                  device=device)
        models.append(m)
    models[1].set_weights(models[0].get_weights())
    return models


def data_for(loss, n, d, k, rng):
    x = rng.normal(size=(n, d)).astype(np.float32)
    if loss in ("sparse_categorical_crossentropy", "multiclass_hinge"):
        y = rng.integers(0, k, n)
    elif loss == "categorical_crossentropy":
        y = np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]
    elif loss == "binary_crossentropy":
        y = rng.integers(0, 2, (n, k)).astype(np.float32)
    elif loss == "poisson":
        y = rng.poisson(1.5, (n, k)).astype(np.float32)
    else:
        y = rng.normal(size=(n, k)).astype(np.float32)
    return x, y


OUTPUT_FOR_LOSS = {"sparse_categorical_crossentropy": "softmax", "categorical_crossentropy": "softmax",
                   "binary_crossentropy": "sigmoid", "mse": "linear", "multiclass_hinge": "linear",
                   "poisson": "exponential", "huber": "linear", "mae": "linear", "log_cosh": "tanh"}
ACTIVATIONS = ["linear", "sigmoid", "tanh", "relu", fm.activations.LeakyReLU(0.1), fm.activations.ELU(0.7),
               "softplus", "selu", "gelu", "silu"]
REGULARIZERS = [None, fm.regularizers.L2(1e-3), fm.regularizers.L1(1e-3), fm.regularizers.L1L2(1e-3, 1e-3)]
OPTIMIZERS = {
    "sgd": lambda: fm.optimizers.SGD(lr=0.05),
    "sgd_nesterov": lambda: fm.optimizers.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "sgd_momentum_damp": lambda: fm.optimizers.SGD(lr=0.05, momentum=0.9, dampening=0.1),
    "adagrad": lambda: fm.optimizers.Adagrad(lr=0.05, lr_decay=1e-3, initial_accumulator_value=0.1),
    "rmsprop": lambda: fm.optimizers.RMSprop(lr=1e-3),
    "rmsprop_centered_momentum": lambda: fm.optimizers.RMSprop(lr=1e-3, centered=True, momentum=0.9),
    "adadelta": lambda: fm.optimizers.Adadelta(),
    "adam": lambda: fm.optimizers.Adam(lr=1e-3),
    "adam_amsgrad_wd": lambda: fm.optimizers.Adam(lr=1e-3, amsgrad=True, weight_decay=1e-2),
    "adamw": lambda: fm.optimizers.AdamW(lr=1e-3),
    "adam_cosine_warmup": lambda: fm.optimizers.Adam(lr=fm.schedules.CosineDecay(1e-3, 40, warmup_steps=5)),
    "nadam": lambda: fm.optimizers.NAdam(lr=2e-3, weight_decay=1e-3),
    "nadam_decoupled": lambda: fm.optimizers.NAdam(lr=2e-3, weight_decay=1e-2, decoupled_weight_decay=True),
    "radam": lambda: fm.optimizers.RAdam(lr=1e-3, betas=(0.9, 0.99)),
    "lamb": lambda: fm.optimizers.LAMB(lr=1e-2, weight_decay=1e-2),
    # clipping: the norm passes (segment_norms_kernel) and the per-element clip
    "sgd_clipvalue": lambda: fm.optimizers.SGD(lr=0.05, momentum=0.9, clipvalue=0.01),
    "adam_clipnorm": lambda: fm.optimizers.Adam(lr=1e-3, clipnorm=0.05),
    "rmsprop_global_clipnorm": lambda: fm.optimizers.RMSprop(lr=1e-3, global_clipnorm=0.05),
    "lamb_clipnorm": lambda: fm.optimizers.LAMB(lr=1e-2, clipnorm=0.05),
}


def check_steps(cpu, gpu_model, x, y, steps=50):
    l_cpu = cpu.train_on_batch(x, y)
    l_gpu = gpu_model.train_on_batch(x, y)
    assert abs(l_cpu - l_gpu) <= 1e-5 * max(1.0, abs(l_cpu))
    assert rel(gpu_model.get_weights(), cpu.get_weights()) <= 1e-5
    for _ in range(steps - 1):
        cpu.train_on_batch(x, y)
        gpu_model.train_on_batch(x, y)
    assert rel(gpu_model.get_weights(), cpu.get_weights()) <= 1e-4


@gpu
@pytest.mark.parametrize("act,loss", list(itertools.product(ACTIVATIONS, sorted(OUTPUT_FOR_LOSS))),
                         ids=lambda v: getattr(v, "name", str(v)))
def test_gpu_matches_cpu_activation_loss(act, loss):
    rng = np.random.default_rng(1)
    x, y = data_for(loss, 64, 12, 5, rng)
    layers = [dict(units=16, activation=act, input_dim=12), dict(units=5, activation=OUTPUT_FOR_LOSS[loss])]
    cpu, gpu_model = make_pair(layers, loss, OPTIMIZERS["adam"])
    np.testing.assert_allclose(gpu_model.predict(x), cpu.predict(x), rtol=1e-5, atol=1e-6)
    check_steps(cpu, gpu_model, x, y)


@gpu
@pytest.mark.parametrize("loss", sorted(OUTPUT_FOR_LOSS))
def test_gpu_matches_cpu_with_sample_weights(loss):
    # The weight column rides with the targets through the gather and the fused loss kernel.
    rng = np.random.default_rng(11)
    x, y = data_for(loss, 70, 12, 5, rng)
    w = rng.uniform(0.0, 3.0, 70).astype(np.float32)
    layers = [dict(units=16, activation="tanh", input_dim=12), dict(units=5, activation=OUTPUT_FOR_LOSS[loss])]
    cpu, gpu_model = make_pair(layers, loss, OPTIMIZERS["sgd"])
    l_cpu, l_gpu = cpu.evaluate(x, y, sample_weight=w)["loss"], gpu_model.evaluate(x, y, sample_weight=w)["loss"]
    assert abs(l_cpu - l_gpu) <= 1e-5 * max(1.0, abs(l_cpu))
    for m in (cpu, gpu_model):
        m.fit(x, y, sample_weight=w, batch_size=16, epochs=2, verbose=0, shuffle=True)
    assert rel(gpu_model.get_weights(), cpu.get_weights()) <= 1e-4


@gpu
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("reg", REGULARIZERS, ids=repr)
def test_gpu_matches_cpu_optimizer_regularizer(name, reg):
    rng = np.random.default_rng(2)
    x, y = data_for("sparse_categorical_crossentropy", 48, 10, 4, rng)
    layers = [dict(units=20, activation="tanh", input_dim=10, kernel_regularizer=reg),
              dict(units=4, activation="softmax", kernel_regularizer=reg)]
    cpu, gpu_model = make_pair(layers, "sparse_categorical_crossentropy", OPTIMIZERS[name])
    check_steps(cpu, gpu_model, x, y)


@gpu
def test_gpu_gradients_match_cpu_and_finite_differences():
    rng = np.random.default_rng(3)
    x, y = data_for("sparse_categorical_crossentropy", 32, 8, 3, rng)
    layers = [dict(units=12, activation="tanh", input_dim=8, kernel_regularizer=fm.regularizers.L2(1e-2)),
              dict(units=3, activation="softmax")]
    cpu, gpu_model = make_pair(layers, "sparse_categorical_crossentropy", "adam")
    assert rel(gpu_model.compute_gradients(x, y), cpu.compute_gradients(x, y)) <= 1e-5
    assert fm.gradcheck(gpu_model, x, y, dtype="float32") < 2e-2


def test_cpu_keeps_no_activation_records():
    m = fm.Sequential([fm.Dense(8, activation="relu", input_dim=3), fm.Dense(2, activation="softmax")], seed=0)
    m.compile(loss="sparse_categorical_crossentropy", device="cpu")
    m.train_on_batch(np.ones((4, 3), np.float32), np.array([0, 1, 0, 1]))
    assert m._engine.activation_records_kept == 0
    assert m._engine.fused_backward_layers == 0


@gpu
@pytest.mark.parametrize("relu_mask", ["1", "0"])
def test_gpu_deep_relu_backward_matches_cpu(relu_mask, monkeypatch):
    """Hidden ReLU layers keep cuBLASLt's mask, and the backward GEMM applies the derivative and
    sums the previous layer's bias gradient (DRELU_BGRAD); FASTMLP_CUDA_RELU_MASK=0 keeps our own
    kernels. Both must agree with the CPU, on odd widths (misaligned biases fall back) too."""
    monkeypatch.setenv("FASTMLP_CUDA_RELU_MASK", relu_mask)
    rng = np.random.default_rng(7)
    x, y = data_for("sparse_categorical_crossentropy", 96, 10, 5, rng)
    layers = [dict(units=132, activation="relu", input_dim=10), dict(units=37, activation="relu"),
              dict(units=64, activation="relu"), dict(units=5, activation="softmax")]
    # SGD: its steps follow the gradients linearly, so 50 of them test the backward pass, not
    # Adam's amplification of float32 noise in near-zero gradients of a deep net.
    cpu, gpu_model = make_pair(layers, "sparse_categorical_crossentropy", OPTIMIZERS["sgd_momentum_damp"])
    assert rel(gpu_model.compute_gradients(x, y), cpu.compute_gradients(x, y)) <= 1e-5
    # The H100 offers RELU_AUX_BIAS and DRELU_BGRAD (../shared/GPU-MACHINE.md). The biases start at
    # parameters 1320, 6336 and 8741: the third is not 16-byte aligned, so that layer takes our
    # own kernels, while the first two (one with a 256-bit mask column) take the epilogues.
    fused = 2 if relu_mask == "1" else 0
    assert gpu_model._engine.activation_records_kept == fused
    assert gpu_model._engine.fused_backward_layers == fused
    check_steps(cpu, gpu_model, x, y)
    h_cpu = cpu.fit(x, y, epochs=2, batch_size=7, verbose=0)
    h_gpu = gpu_model.fit(x, y, epochs=2, batch_size=7, verbose=0)
    np.testing.assert_allclose(h_gpu.history["loss"], h_cpu.history["loss"], rtol=1e-4)
    assert rel(gpu_model.get_weights(), cpu.get_weights()) <= 1e-4


@gpu
@pytest.mark.parametrize("precision,tol", [("tf32", 5e-3), ("bf16", 3e-2)])
def test_gpu_reduced_precision_changes_only_the_gemms(precision, tol):
    """tf32/bf16 round the GEMM operands (10 and 7 mantissa bits): gradients stay within a few
    roundings of float32's but are not bit-equal to them, so the precision was not silently
    dropped; weights and optimizer state stay float32 and training still learns."""
    rng = np.random.default_rng(8)
    x, y = data_for("sparse_categorical_crossentropy", 256, 32, 4, rng)
    y = (x[:, :4] @ rng.normal(size=4)).argsort().argsort() * 4 // 256  # learnable labels
    models = {}
    for p in ("float32", precision):
        m = fm.Sequential([fm.Dense(64, activation="relu", input_dim=32), fm.Dense(64, activation="tanh"),
                           fm.Dense(4, activation="softmax")], seed=0)
        m.compile(optimizer=fm.optimizers.SGD(lr=0.1, momentum=0.9), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], device="cuda", precision=p)
        models[p] = m
    g32, glow = models["float32"].compute_gradients(x, y), models[precision].compute_gradients(x, y)
    assert 0 < rel(glow, g32) <= tol
    h32 = models["float32"].fit(x, y, epochs=20, batch_size=32, verbose=0)
    hlow = models[precision].fit(x, y, epochs=20, batch_size=32, verbose=0)
    assert hlow.history["loss"][-1] < 0.5 * hlow.history["loss"][0]
    assert abs(hlow.history["loss"][-1] - h32.history["loss"][-1]) <= 0.1 * h32.history["loss"][0]
    assert all(w.dtype == np.float32 for w in models[precision].get_weights())
    assert models[precision]._engine.get_state().dtype == np.float32


@gpu
@pytest.mark.parametrize("batch,width", [(1, 8), (7, 8), (16, 1), (32, 4097)])
def test_gpu_fit_odd_sizes_matches_cpu(batch, width):
    rng = np.random.default_rng(4)
    n = 50  # 50 % 7 = 1: a partial last batch
    x, y = data_for("sparse_categorical_crossentropy", n, 6, 3, rng)
    layers = [dict(units=width, activation="relu", input_dim=6), dict(units=3, activation="softmax")]
    cpu, gpu_model = make_pair(layers, "sparse_categorical_crossentropy", lambda: fm.optimizers.SGD(lr=0.01))
    h_cpu = cpu.fit(x, y, epochs=2, batch_size=batch, verbose=0)
    h_gpu = gpu_model.fit(x, y, epochs=2, batch_size=batch, verbose=0)
    np.testing.assert_allclose(h_gpu.history["loss"], h_cpu.history["loss"], rtol=1e-4)
    assert rel(gpu_model.get_weights(), cpu.get_weights()) <= 1e-4


@gpu
def test_gpu_out_of_memory_is_a_python_error_and_process_survives():
    m = fm.Sequential([fm.Dense(200_000, input_dim=200_000), fm.Dense(2)], seed=0)  # 160 GB of weights
    with pytest.raises(MemoryError, match="(?i)memory"):
        m.compile(loss="mse", device="cuda")
    small = fm.Sequential([fm.Dense(4, input_dim=3), fm.Dense(1)], seed=0)
    small.compile(loss="mse", device="cuda")
    assert np.isfinite(small.train_on_batch(np.ones((4, 3)), np.ones(4)))


@gpu
def test_gpu_nonfinite_loss_keeps_last_good_weights():
    rng = np.random.default_rng(5)
    x, y = data_for("mse", 64, 4, 1, rng)
    m = fm.Sequential([fm.Dense(32, activation="relu", input_dim=4), fm.Dense(1)], seed=0)
    m.compile(optimizer=fm.optimizers.SGD(lr=1e6), loss="mse", device="cuda")
    with pytest.raises(fm.NonFiniteLossError):
        m.fit(x * 1e3, y, epochs=5, batch_size=8, verbose=0)
    assert all(np.isfinite(w).all() for w in m.get_weights())


MNIST = Path(os.environ.get("FASTMLP_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))


@gpu
@pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").exists() and
                    not (MNIST / "train-images-idx3-ubyte").exists(), reason="MNIST files not present")
def test_gpu_mnist_reaches_97_5_percent():
    (x, y), (xt, yt) = fm.datasets.load_mnist(str(MNIST))
    m = fm.Sequential([fm.Dense(512, activation="relu", input_dim=784), fm.Dense(512, activation="relu"),
                       fm.Dense(10, activation="softmax")], seed=0)
    m.compile(optimizer=fm.optimizers.Adam(lr=1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"],
              device="cuda")
    m.fit(x, y, epochs=5, batch_size=128, verbose=0)
    assert m.evaluate(xt, yt)["accuracy"] >= 0.975


@gpu
def test_gpu_uses_device_arrays_in_place():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no GPU")
    rng = np.random.default_rng(6)
    x, y = data_for("sparse_categorical_crossentropy", 64, 8, 3, rng)
    models = []
    for xs, ys in ((x, y), (torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda())):
        m = fm.Sequential([fm.Dense(16, activation="relu", input_dim=8), fm.Dense(3, activation="softmax")], seed=3)
        m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"], device="cuda")
        m.fit(xs, ys, epochs=2, batch_size=16, verbose=0, validation_data=(xs, ys))
        models.append((m, xs))
    (host_model, _), (dev_model, xd) = models
    for a, b in zip(host_model.get_weights(), dev_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dev_model.predict(xd), host_model.predict(x))
    with pytest.raises(TypeError, match="float32"):
        dev_model.predict(xd.double())
    with pytest.raises(ValueError, match="labels"):
        dev_model.evaluate(xd, torch.full((64,), 7, device="cuda"))
    cpu_model = fm.Sequential([fm.Dense(3, activation="softmax", input_dim=8)], seed=0)
    cpu_model.compile(loss="sparse_categorical_crossentropy", device="cpu")
    with pytest.raises(TypeError, match="GPU"):
        cpu_model.predict(xd)


@gpu
def test_gpu_hvp_matches_cpu():
    # The R-operator's backend passes (matmul, axpy, the second-order chain, the loss Hessian) on CUDA.
    rng = np.random.default_rng(7)
    for loss, out in (("sparse_categorical_crossentropy", "softmax"), ("binary_crossentropy", "sigmoid"),
                      ("mse", "tanh")):
        x, y = data_for(loss, 40, 6, 3, rng)
        layers = [dict(units=9, activation="tanh", input_dim=6, kernel_regularizer=fm.regularizers.L2(1e-2)),
                  dict(units=3, activation=out)]
        cpu, gpu_model = make_pair(layers, loss, OPTIMIZERS["adam"])
        v = rng.normal(size=cpu.count_params()).astype(np.float32)
        assert rel(fm.hvp(gpu_model, x, y, v), fm.hvp(cpu, x, y, v)) <= 1e-4


@gpu
def test_gpu_metrics_match_cpu():
    # The further metrics' atomic sums on the GPU against the CPU's, for every kind at once.
    rng = np.random.default_rng(12)
    x, y = data_for("sparse_categorical_crossentropy", 300, 12, 5, rng)
    layers = [dict(units=16, activation="tanh", input_dim=12), dict(units=5, activation="softmax")]
    metrics = ["accuracy", fm.metrics.TopKCategoricalAccuracy(2), "mae", "mse", "precision", "recall", "auc"]
    cpu, gpu_model = make_pair(layers, "sparse_categorical_crossentropy", OPTIMIZERS["adam"], metrics=metrics)
    for m in (cpu, gpu_model):
        m.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    a, b = cpu.evaluate(x, y), gpu_model.evaluate(x, y)
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=2e-3), key
