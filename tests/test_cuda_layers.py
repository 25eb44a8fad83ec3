"""CUDA backend: the Dropout, BatchNormalization, LayerNormalization and Activation layers agree
with the CPU backend.

Runs on a machine with an NVIDIA GPU and skips elsewhere. Each pair of models starts from the
same weights; dropout masks are drawn from (seed, step, element) by the same function on both
backends, so they are bit-identical and every result must agree up to float32 rounding. The
normalizations subtract sums of similar size in their input gradient, so gradients and weights
are compared at the bound test_cuda.py uses after 50 steps (1e-4), not the one-step 1e-5.
"""
import numpy as np
import pytest

import fastmlp as fm

gpu = pytest.mark.skipif(not fm.cuda_is_available(),
                         reason="no usable CUDA GPU: " + fm.build_info()["cuda_reason"][:200])

N_IN, N_OUT = 10, 4
TOL = 1e-4


def rel(a, b):
    a = np.concatenate([np.asarray(w).ravel() for w in a]).astype(np.float64)
    b = np.concatenate([np.asarray(w).ravel() for w in b]).astype(np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


# Architectures as functions, so that each model gets fresh layers and collection does not touch
# the layer classes. Widths 37 and 129 are not multiples of the 32-column tiles or of a warp;
# layers first in the model have no input gradient to write (dX null).
ARCHS = {
    "dropout": lambda: [fm.Dense(37, activation="relu", input_dim=N_IN), fm.Dropout(0.3, seed=7),
                        fm.Dense(N_OUT, activation="softmax")],
    "dropout_first": lambda: [fm.Dropout(0.5, seed=11, input_dim=N_IN), fm.Dense(129, activation="tanh"),
                              fm.Dropout(0.2, seed=12), fm.Dense(N_OUT, activation="softmax")],
    "batchnorm": lambda: [fm.Dense(129, activation="tanh", input_dim=N_IN), fm.BatchNormalization(),
                          fm.Dense(N_OUT, activation="softmax")],
    "batchnorm_first_plain": lambda: [fm.BatchNormalization(momentum=0.9, center=False, scale=False, input_dim=N_IN),
                                      fm.Dense(37, activation="sigmoid"), fm.BatchNormalization(epsilon=1e-2),
                                      fm.Dense(N_OUT, activation="softmax")],
    "layernorm": lambda: [fm.Dense(37, activation="elu", input_dim=N_IN), fm.LayerNormalization(),
                          fm.Dense(N_OUT, activation="softmax")],
    "layernorm_first_wide": lambda: [fm.LayerNormalization(input_dim=N_IN), fm.Dense(300, activation="relu"),
                                     fm.LayerNormalization(center=False, scale=False),
                                     fm.Dense(N_OUT, activation="softmax")],
    "activation": lambda: [fm.Dense(37, input_dim=N_IN), fm.Activation("tanh"), fm.Dense(129, activation="relu"),
                           fm.Activation("sigmoid"), fm.Dense(N_OUT, activation="softmax")],
    "activation_first": lambda: [fm.Activation("relu", input_dim=N_IN), fm.Activation("tanh"),
                                 fm.Dense(N_OUT, activation="softmax")],
    "mixed": lambda: [fm.Dense(129, activation="relu", input_dim=N_IN), fm.BatchNormalization(),
                      fm.Dropout(0.5, seed=3), fm.Dense(37, activation="leaky_relu"), fm.LayerNormalization(),
                      fm.Activation("relu"), fm.Dropout(0.1, seed=4), fm.Dense(N_OUT, activation="softmax")],
}


def make_pair(arch, optimizer=lambda: fm.optimizers.SGD(lr=0.05, momentum=0.9), seed=0):
    models = []
    for device in ("cpu", "cuda"):
        m = fm.Sequential(ARCHS[arch](), seed=seed)
        m.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  device=device)
        models.append(m)
    models[1].set_weights(models[0].get_weights())
    return models


def data(n, seed=1):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, N_IN)) * 2.0 + 0.5).astype(np.float32)  # not already normalized
    y = rng.integers(0, N_OUT, n)
    return x, y


@gpu
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_gpu_layers_forward_matches_cpu(arch):
    cpu, gpu_model = make_pair(arch)
    x, y = data(300)
    # Inference: dropout is the identity, BatchNormalization uses the moving statistics.
    np.testing.assert_allclose(gpu_model.predict(x), cpu.predict(x), rtol=1e-5, atol=1e-6)
    e_cpu, e_gpu = cpu.evaluate(x, y), gpu_model.evaluate(x, y)
    assert abs(e_gpu["loss"] - e_cpu["loss"]) <= 1e-5 * max(1.0, abs(e_cpu["loss"]))
    assert e_gpu["accuracy"] == pytest.approx(e_cpu["accuracy"], abs=1.5 / len(y))  # a tie may flip


@gpu
@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("rows", [64, 1000, 1])
def test_gpu_layers_gradients_match_cpu(arch, rows):
    """Training-mode forward (batch statistics, dropout masks) and the backward pass. 1000 rows
    take many rows per thread in the column reductions; 1 row gives BatchNormalization a variance
    of 0, so its input gradient is 0 and its output is beta."""
    cpu, gpu_model = make_pair(arch)
    x, y = data(rows, seed=2)
    g_cpu, g_gpu = cpu.compute_gradients(x, y), gpu_model.compute_gradients(x, y)
    assert len(g_cpu) == len(g_gpu)
    for a, b in zip(g_gpu, g_cpu):
        assert a.shape == b.shape and np.isfinite(a).all()
    assert rel(g_gpu, g_cpu) <= TOL


@gpu
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_gpu_layers_fit_matches_cpu(arch):
    """20 steps of fit: 77 rows in batches of 4 end with a batch of 1 row. Each step draws new
    dropout masks from the step count on the device (the captured step is replayed) and averages
    the batch statistics into BatchNormalization's moving mean and variance."""
    cpu, gpu_model = make_pair(arch)
    x, y = data(77, seed=3)
    before = cpu.get_weights()
    h_cpu = cpu.fit(x, y, epochs=1, batch_size=4, verbose=0)
    h_gpu = gpu_model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    np.testing.assert_allclose(h_gpu.history["loss"], h_cpu.history["loss"], rtol=TOL)
    after = cpu.get_weights()
    assert rel(after, before) > 1e-3, "training changed nothing: the comparison would prove nothing"
    assert rel(gpu_model.get_weights(), after) <= TOL
    for a, b in zip(gpu_model.get_weights(), after):
        assert np.isfinite(a).all()
        assert rel([a], [b]) <= 10 * TOL or np.abs(a - b).max() <= 1e-5  # no layer hides in the total
    # The trained moving statistics are what inference uses now.
    np.testing.assert_allclose(gpu_model.predict(x), cpu.predict(x), rtol=1e-4, atol=1e-5)
    e_cpu, e_gpu = cpu.evaluate(x, y), gpu_model.evaluate(x, y)
    assert abs(e_gpu["loss"] - e_cpu["loss"]) <= TOL * max(1.0, abs(e_cpu["loss"]))


@gpu
def test_gpu_dropout_masks_are_the_cpus_and_change_every_step():
    """With Dropout first and a linear Dense after it, W's gradient is (mask * x / (1 - rate))^T dZ:
    one differing mask element among 64 x 10 would move it by far more than rounding."""
    def pair():
        ms = []
        for device in ("cpu", "cuda"):
            m = fm.Sequential([fm.Dropout(0.5, seed=5, input_dim=N_IN), fm.Dense(3)], seed=0)
            m.compile(optimizer=fm.optimizers.SGD(lr=0.01), loss="mse", device=device)
            ms.append(m)
        ms[1].set_weights(ms[0].get_weights())
        return ms

    cpu, gpu_model = pair()
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, N_IN)).astype(np.float32)
    y = rng.normal(size=(64, 3)).astype(np.float32)
    grads = []
    for _ in range(3):
        g_cpu, g_gpu = cpu.compute_gradients(x, y), gpu_model.compute_gradients(x, y)
        assert rel(g_gpu, g_cpu) <= 1e-5
        grads.append(g_gpu[0])
        cpu.train_on_batch(x, y)  # advances the step, so the next mask differs
        gpu_model.train_on_batch(x, y)
    assert not np.allclose(grads[0], grads[1], rtol=1e-2)
    assert rel(gpu_model.get_weights(), cpu.get_weights()) <= 1e-5
    # Inference skips dropout on both.
    np.testing.assert_allclose(gpu_model.predict(x), cpu.predict(x), rtol=1e-5, atol=1e-6)


@gpu
@pytest.mark.parametrize("batch", [1, 7, 256])
def test_gpu_batchnorm_fit_with_adam_several_epochs_matches_cpu(batch):
    """The moving statistics are not trained: Adam's state and weight decay must leave them alone
    on the device as on the host, over epochs with shuffling and a partial last batch."""
    opt = lambda: fm.optimizers.AdamW(lr=1e-3, weight_decay=1e-2)  # noqa: E731
    cpu, gpu_model = make_pair("batchnorm", optimizer=opt)
    x, y = data(50 if batch < 256 else 600, seed=6)
    h_cpu = cpu.fit(x, y, epochs=2, batch_size=batch, verbose=0)
    h_gpu = gpu_model.fit(x, y, epochs=2, batch_size=batch, verbose=0)
    np.testing.assert_allclose(h_gpu.history["loss"], h_cpu.history["loss"], rtol=TOL)
    assert rel(gpu_model.get_weights(), cpu.get_weights()) <= TOL
    np.testing.assert_allclose(gpu_model.predict(x), cpu.predict(x), rtol=1e-4, atol=1e-5)
