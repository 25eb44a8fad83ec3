"""Dropout, BatchNormalization, LayerNormalization and Activation on the CPU, against the float64
NumPy reference (tests/reference.py) and against PyTorch's and Keras's formulas written out.

* Inference (predict, evaluate) and training-mode gradients (compute_gradients, fm.gradcheck) of
  many layer combinations: each kind first, in the middle and right before (or as) the output,
  center/scale off, Dense(None) + Activation (fused natively), Dense(relu) + Activation(softmax),
  different losses. float64 engines agree to 1e-10, float32 ones to 1e-5 (relative to max(1, |x|)).
* Dropout masks are Philox4x32-10 of (seed, step, element); the reference draws the same ones.
* Bad layer arguments raise ValueError naming the problem and change nothing.
Training step for step (fit, train_on_batch, moving statistics), reproducibility, save/load and
the rest of the API with these layers are in tests/test_layers_training.py.
"""
import itertools

import numpy as np
import pytest

import fastmlp as fm
import reference as ref
from test_reference import LOSS_CLASS, activation, assert_all_close, assert_close, targets

D, DO, BN, LN, A = ref.Dense, ref.Dropout, ref.BatchNorm, ref.LayerNorm, ref.Activation
N_IN, K = 4, 3
TOL = {"float64": 1e-10, "float32": 1e-5}


# ----------------------------------------------------------------------- building

def fm_layer(entry, input_dim=None):
    """The fastmlp layer a reference spec entry describes."""
    lay, kw = ref.layer(entry), {} if input_dim is None else {"input_dim": input_dim}
    if isinstance(lay, ref.Dense):
        reg = fm.regularizers.L1L2(lay.l1, lay.l2) if (lay.l1 or lay.l2) else None
        act = None if lay.act == "linear" else activation(lay.act, lay.param)
        return fm.Dense(lay.units, activation=act, kernel_regularizer=reg, **kw)
    if isinstance(lay, ref.Dropout):
        return fm.Dropout(lay.rate, lay.seed, **kw)
    if isinstance(lay, ref.BatchNorm):
        return fm.BatchNormalization(lay.momentum, lay.epsilon, lay.center, lay.scale, **kw)
    if isinstance(lay, ref.LayerNorm):
        return fm.LayerNormalization(lay.epsilon, lay.center, lay.scale, **kw)
    return fm.Activation(activation(lay.act, lay.param), **kw)


def build(spec, loss, optimizer="sgd", dtype="float64", from_logits=False, seed=0, input_dim=N_IN):
    """(compiled CPU model, the spec with its Dropout seeds resolved as the model resolves them)."""
    m = fm.Sequential([fm_layer(e, input_dim if i == 0 else None) for i, e in enumerate(spec)], seed=seed)
    m.compile(optimizer=optimizer, loss=LOSS_CLASS[loss](from_logits=True) if from_logits else loss,
              device="cpu", dtype=dtype)
    return m, ref.resolve_seeds(spec, seed)


def random_weights(spec, rng, dtype="float64", input_dim=N_IN):
    """Weights away from their initial values (moving statistics too), rounded to dtype."""
    draw = {"kernel": lambda s: rng.normal(scale=0.6, size=s), "bias": lambda s: rng.normal(scale=0.2, size=s),
            "gamma": lambda s: 1 + rng.normal(scale=0.3, size=s), "beta": lambda s: rng.normal(scale=0.3, size=s),
            "moving_mean": lambda s: rng.normal(scale=0.5, size=s),
            "moving_variance": lambda s: rng.uniform(0.5, 2.0, size=s)}
    names = [n for e in spec for n in ref.weight_names(e)]
    return [draw[n](s).astype(dtype).astype(np.float64) for n, s in zip(names, ref.weight_shapes(spec, input_dim))]


def features(rng, n, dtype="float64", d=N_IN):
    """Inputs far from normalized (scale 2, offset 0.5), rounded to dtype."""
    return (rng.normal(size=(n, d)) * 2.0 + 0.5).astype(dtype).astype(np.float64)


def labels(loss, n, rng, dtype="float64"):
    """Targets for the loss (K outputs); target rows rounded to dtype, class ids as they are."""
    y = targets(loss, n, K, rng)
    return y.astype(dtype).astype(np.float64) if y.ndim == 2 else y


# ------------------------------------------------------------------ architectures
# A body (the layers before the output part) and a head (the output part with its loss) make a
# model; every body is tried with every head. Dropout seeds None are derived from the model's.

BODIES = {
    "bn_first": [BN(0.9), D(6, "tanh")],
    "bn_middle": [D(6, "relu"), BN(), D(5, "elu", 0.7)],
    "bn_plain": [D(6, "sigmoid"), BN(0.8, 1e-2, center=False, scale=False)],
    "bn_center_only": [D(6, "leaky_relu", 0.1), BN(0.5, 1e-3, center=True, scale=False)],
    "bn_scale_only_first": [BN(0.0, 1e-3, center=False, scale=True), D(6, "tanh")],
    "bn_frozen_statistics": [D(6, "tanh"), BN(1.0, 1e-1), D(1), LN(), D(5, "sigmoid")],  # LN of one feature
    "ln_first": [LN(), D(6, "tanh")],
    "ln_middle": [D(6, "elu", 1.0), LN(1e-2), D(5, "relu")],
    "ln_plain": [D(6, "tanh"), LN(1e-3, center=False, scale=False)],
    "ln_scale_only": [D(6, "sigmoid"), LN(1e-3, center=False, scale=True)],
    "dropout_first": [DO(0.4, 123), D(6, "tanh")],
    "dropout_middle": [D(6, "relu"), DO(0.3), D(5, "sigmoid")],
    "dropout_zero": [D(6, "tanh"), DO(0.0, 5)],
    "activation_fused": [D(6), A("tanh"), D(5), A("elu", 0.5)],
    "fused_then_dropout": [D(6), A("tanh"), DO(0.4), D(5, "sigmoid")],  # seed of layer 2, op 1
    "activation_after_dense": [D(6, "relu"), A("sigmoid")],
    "activation_first": [A("tanh"), D(6, "leaky_relu", 0.2), A("relu")],
    "activation_smooth": [D(6), A("sigmoid"), D(5, "tanh"), A("elu", 1.0)],
    "mixed": [D(6), BN(), A("relu"), DO(0.25, 9), D(5, "tanh"), LN(), DO(0.1)],
    # GELU/SiLU keep their input (a Dense(gelu) runs as Dense + Activation op): every neighbour
    "gelu_silu": [D(6, "gelu"), DO(0.3, 4), D(6, "silu"), BN(), D(5, "gelu"), LN(), D(5, "softplus"), A("silu")],
    "gelu_layers": [D(6), A("gelu"), D(5, "selu"), A("silu"), D(5, "silu"), D(4, "tanh")],
}

# name: (output layers, loss, from_logits)
HEADS = {
    "softmax": ([D(K, "softmax")], "sparse_categorical_crossentropy", False),
    "dense_activation_softmax": ([D(K), A("softmax")], "categorical_crossentropy", False),  # fused
    "relu_then_softmax": ([D(K, "relu"), A("softmax")], "sparse_categorical_crossentropy", False),
    "tanh_then_softmax_mse": ([D(K, "tanh"), A("softmax")], "mse", False),
    "logits": ([D(K)], "sparse_categorical_crossentropy", True),
    "sigmoid": ([D(K, "sigmoid")], "binary_crossentropy", False),
    "elu_then_sigmoid": ([D(K, "elu", 1.0), A("sigmoid")], "binary_crossentropy", False),
    "hinge": ([D(K, "tanh", 0.0, 1e-3, 1e-2)], "multiclass_hinge", False),
    "bn_before_output": ([BN(0.9), D(K, "softmax")], "sparse_categorical_crossentropy", False),
    "ln_before_output": ([LN(), D(K), A("softmax")], "categorical_crossentropy", False),
    "dropout_before_output": ([DO(0.5, 6), D(K, "sigmoid")], "mse", False),
    "bn_output": ([D(K), BN(0.9)], "mse", False),
    "ln_output": ([D(K, "tanh"), LN()], "mse", False),
    "dropout_output": ([D(K), DO(0.2, 4)], "binary_crossentropy", True),
    "activation_output_after_norm": ([D(K), LN(), A("tanh")], "mse", False),
    "softmax_after_bn": ([D(K), BN(0.9), A("softmax")], "sparse_categorical_crossentropy", False),
    "softmax_after_dropout": ([D(K, "elu", 1.0), DO(0.3, 2), A("softmax")], "categorical_crossentropy", False),
    "sigmoid_after_ln": ([D(K), LN(), A("sigmoid")], "binary_crossentropy", False),
    "two_activations_then_softmax": ([D(K), A("tanh"), A("softmax")], "sparse_categorical_crossentropy", False),
    "gelu_output": ([D(K, "gelu")], "mse", False),
    "silu_then_softmax": ([D(K, "silu"), A("softmax")], "sparse_categorical_crossentropy", False),
}


def arch(body, head):
    layers, loss, logits = HEADS[head]
    return BODIES[body] + layers, loss, logits


ALL = list(itertools.product(BODIES, HEADS))
# float32: every body and every head at least once
F32 = [(b, h) for i, (b, h) in enumerate(ALL) if i % (len(HEADS) + 1) == 0 or (b == "mixed")]


def compare_with_reference(body, head, dtype, rows=9, seed=0):
    spec, loss, logits = arch(body, head)
    rng = np.random.default_rng(seed)
    m, spec = build(spec, loss, dtype=dtype, from_logits=logits, seed=seed + 3)
    w = random_weights(spec, rng, dtype)
    m.set_weights(w)
    x, y = features(rng, rows, dtype), labels(loss, rows, rng, dtype)
    tol = TOL[dtype]
    got = m.predict(x)
    assert got.dtype == np.dtype(dtype)
    assert_close(got, ref.predict(spec, w, x), tol, "predict")
    assert m.evaluate(x, y)["loss"] == pytest.approx(ref.loss_value(spec, w, x, y, loss), rel=tol, abs=tol)
    _, want = ref.gradients(spec, w, x, y, loss, step=m._engine.step)
    grads = m.compute_gradients(x, y)
    assert [g.shape for g in grads] == [a.shape for a in w]
    assert_all_close(grads, want, tol, "gradients")
    return m, spec, w, x, y


@pytest.mark.parametrize("body,head", ALL, ids=[f"{b}-{h}" for b, h in ALL])
def test_float64_matches_reference(body, head):
    m, spec, w, x, y = compare_with_reference(body, head, "float64")
    # moving statistics get a zero gradient; compute_gradients changed nothing
    flags = ref.trainable(spec)
    assert all(not g.any() for g, f in zip(m.compute_gradients(x, y), flags) if not f)
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), w)) and m._engine.step == 0


@pytest.mark.parametrize("body,head", F32, ids=[f"{b}-{h}" for b, h in F32])
def test_float32_matches_reference(body, head):
    compare_with_reference(body, head, "float32", seed=1)


@pytest.mark.parametrize("body", ["bn_middle", "mixed", "bn_first"])
def test_one_row_batch_normalization_outputs_beta(body):
    """A training batch of one row: variance 0, BatchNormalization outputs beta and passes no
    gradient to its input; the reference agrees (and nothing is NaN)."""
    spec, loss, _ = arch(body, "bn_output")
    rng = np.random.default_rng(2)
    m, spec = build(spec, loss)
    w = random_weights(spec, rng)
    m.set_weights(w)
    x, y = features(rng, 1), rng.normal(size=(1, K))
    loss_value, want = ref.gradients(spec, w, x, y, loss)
    got = m.compute_gradients(x, y)
    assert all(np.isfinite(g).all() for g in got)
    assert_all_close(got, want, 1e-10, "one row")
    beta = w[-3]  # the output BatchNorm: [gamma, beta, moving_mean, moving_variance]
    assert ref.forward_layers(spec, w, x, training=True)[-1]["out"] == pytest.approx(beta[None, :], abs=1e-12)
    assert loss_value == pytest.approx(np.mean((beta - y) ** 2), rel=1e-12)
    assert not got[0].any()  # the first layer's weights do not reach the loss through one row


# ------------------------------------------------------------ finite differences

SMOOTH = [("bn_first", "softmax"), ("bn_plain", "sigmoid"), ("bn_scale_only_first", "bn_output"),
          ("ln_first", "ln_before_output"), ("ln_plain", "elu_then_sigmoid"), ("ln_scale_only", "ln_output"),
          ("dropout_first", "dense_activation_softmax"), ("dropout_zero", "dropout_output"),
          ("activation_smooth", "tanh_then_softmax_mse"), ("bn_first", "bn_before_output"),
          ("ln_first", "activation_output_after_norm"), ("dropout_first", "dropout_before_output")]


KINKED = [("mixed", "relu_then_softmax"), ("activation_fused", "logits"), ("bn_middle", "hinge"),
          ("dropout_middle", "bn_output"), ("activation_first", "ln_output"), ("bn_center_only", "softmax")]
# (body, head, eps, bound): the bounds of test_gradcheck.py, 1e-6 smooth and 1e-4 with kinks
GRADCHECK = [(b, h, None, 1e-6) for b, h in SMOOTH] + [(b, h, 1e-6, 1e-4) for b, h in KINKED]


@pytest.mark.parametrize("body,head,eps,bound", GRADCHECK, ids=[f"{b}-{h}" for b, h, _, _ in GRADCHECK])
def test_gradcheck_new_layers(body, head, eps, bound):
    """fm.gradcheck (float64 twin, central differences) over every parameter. After two steps,
    so the Dropout masks are those of step 2 and the weights have moved."""
    spec, loss, logits = arch(body, head)
    rng = np.random.default_rng(3)
    m, _ = build(spec, loss, optimizer=fm.optimizers.SGD(lr=0.05), from_logits=logits, seed=4)
    x, y = features(rng, 10), labels(loss, 10, rng)
    m.train_on_batch(x, y)
    m.train_on_batch(x, y)
    worst, details = fm.gradcheck(m, x, y, eps=eps, return_details=True)
    assert details["n_checked"] == m.count_params() and np.abs(details["analytic"]).max() > 1e-3
    assert worst < bound


@pytest.mark.parametrize("body,head", SMOOTH[::2] + [("mixed", "relu_then_softmax")],
                         ids=[f"{b}-{h}" for b, h in SMOOTH[::2] + [("mixed", "relu_then_softmax")]])
def test_reference_gradients_match_its_finite_differences(body, head):
    """The reference's backward pass (staged chain rule) against differences of its own forward."""
    spec, loss, _ = arch(body, head)
    rng = np.random.default_rng(5)
    spec = ref.resolve_seeds(spec, 1)
    w = random_weights(spec, rng)
    x, y = features(rng, 7), labels(loss, 7, rng)
    _, g = ref.gradients(spec, w, x, y, loss, step=3)
    for i, flag in enumerate(ref.trainable(spec)):
        for idx in itertools.islice(np.ndindex(w[i].shape), 4):
            wp, wm = [a.copy() for a in w], [a.copy() for a in w]
            wp[i][idx] += 1e-6
            wm[i][idx] -= 1e-6
            num = (ref.loss_value(spec, wp, x, y, loss, training=True, step=3)
                   - ref.loss_value(spec, wm, x, y, loss, training=True, step=3)) / 2e-6
            assert num == pytest.approx(g[i][idx] if flag else 0.0, rel=1e-5, abs=1e-7), (i, idx)


# ------------------------------------------------------------------------ dropout

def dropout_mask_of(rate, seed, rows, cols, step=0, model_seed=0, dtype="float64"):
    """The mask fastmlp applies, read off compute_gradients: model Dense(cols) -> Dropout with
    x = I (rows x rows), W = 0, b = 0 and mse against y = -1: dL/dW = x.T @ dz = dz, which is
    2 / (rows * cols) * keep / (1 - rate)."""
    m = fm.Sequential([fm.Dense(cols, input_dim=rows), fm.Dropout(rate, seed)], seed=model_seed)
    m.compile("sgd", "mse", device="cpu", dtype=dtype)
    m.set_weights([np.zeros((rows, cols)), np.zeros(cols)])
    m._engine.step = step
    dW = m.compute_gradients(np.eye(rows), -np.ones((rows, cols)))[0]
    kept = dW != 0
    assert np.allclose(dW[kept], 2 / (rows * cols) / (1 - rate), rtol=1e-12 if dtype == "float64" else 1e-6)
    return kept


@pytest.mark.parametrize("rate,seed,step", [(0.3, 7, 0), (0.5, 2 ** 64 - 1, 5), (0.9, 123456789, 1),
                                            (0.1, None, 0), (0.5, 2 ** 40 + 3, 2 ** 33 + 7), (0.999, 1, 0)])
def test_dropout_masks_equal_reference_philox(rate, seed, step):
    kept = dropout_mask_of(rate, seed, 24, 31, step, model_seed=11)
    own = fm._core.derive_seed(11, 1_000_001) if seed is None else seed
    np.testing.assert_array_equal(kept, ref.dropout_keep(own, step, 24, 31, rate))
    other = ref.dropout_keep(own, step + 1, 24, 31, rate)
    assert rate > 0.99 or (kept != other).any()  # the next step draws other masks


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows,cols,step", [(363, 401, 3), (7, 9, 2 ** 33 + 1), (1, 64, 0), (3, 65, 1), (1, 63, 4)])
def test_dropout_masks_where_blocks_straddle_rows_and_threads(rows, cols, step, dtype):
    """The CPU draws 64 elements per 16 Philox calls and the partial blocks at either end of a
    thread's piece one by one: odd shapes must give the reference's element-by-element masks in
    both precisions. 363 x 401 elements are split over 2 threads inside a block."""
    threads = fm.get_num_threads()
    fm.set_num_threads(2)
    try:
        kept = dropout_mask_of(0.4, 2 ** 63 + 5, rows, cols, step, dtype=dtype)
    finally:
        fm.set_num_threads(threads)
    np.testing.assert_array_equal(kept, ref.dropout_keep(2 ** 63 + 5, step, rows, cols, 0.4))


def test_reference_dropout_uses_all_four_philox_words_in_blocks_of_64():
    """The reference's block layout written out: element 16 k + l of block b is word k of
    counter 16 b + l; and a mask starting at element `first` is the tail of the mask from 0."""
    seed, step, rate = 12345, 6, 0.5
    full = ref.dropout_keep(seed, step, 1, 3 * 64, rate).ravel()
    for e in (0, 15, 16, 47, 63, 64, 100, 191):
        b, j = divmod(e, 64)
        words = ref.philox4x32_10([16 * b + j % 16, 0, step, 0], (seed, 0))
        assert full[e] == (int(words[j // 16]) >= 2 ** 31)
    np.testing.assert_array_equal(ref.dropout_keep(seed, step, 1, 3 * 64 - 37, rate, first=37).ravel(), full[37:])


def test_reference_philox_known_answers_and_seed_derivation():
    """Random123's known-answer vectors for Philox4x32-10, and fastmlp's seed derivation."""
    kat = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
           ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
           ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, want in kat:
        assert tuple(int(w) for w in ref.philox4x32_10(counter, key)) == want
    for seed, stream in [(0, 0), (5, 1_000_003), (2 ** 64 - 1, 7), (123, 2 ** 40)]:
        assert ref.derive_seed(seed, stream) == fm._core.derive_seed(seed, stream)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_kept_fraction_over_a_large_tensor(rate):
    kept = dropout_mask_of(rate, 99, 200, 400)
    n = kept.size
    assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
    # no structure: each column and each row keeps about 1 - rate too
    assert abs(kept.mean(axis=0) - (1 - rate)).max() < 6 * np.sqrt(rate * (1 - rate) / 200)
    np.testing.assert_array_equal(kept, ref.dropout_keep(99, 0, 200, 400, rate))


def test_dropout_rate_zero_is_the_identity_in_training():
    rng = np.random.default_rng(6)
    with_dropout, _ = build([D(6, "tanh"), DO(0.0, 3), D(K, "softmax")], "sparse_categorical_crossentropy")
    without, _ = build([D(6, "tanh"), D(K, "softmax")], "sparse_categorical_crossentropy")
    without.set_weights(with_dropout.get_weights())
    x, y = features(rng, 20), rng.integers(0, K, 20)
    assert dropout_mask_of(0.0, 3, 20, 6).all()
    for a, b in zip(with_dropout.compute_gradients(x, y), without.compute_gradients(x, y)):
        np.testing.assert_array_equal(a, b)
    h1 = with_dropout.fit(x, y, batch_size=6, epochs=2, verbose=0)
    h2 = without.fit(x, y, batch_size=6, epochs=2, verbose=0)
    assert h1.history == h2.history
    assert all(np.array_equal(a, b) for a, b in zip(with_dropout.get_weights(), without.get_weights()))


def test_dropout_is_the_identity_in_predict_and_evaluate():
    rng = np.random.default_rng(7)
    m, _ = build([DO(0.5, 1), D(6, "tanh"), DO(0.7), D(K, "softmax")], "sparse_categorical_crossentropy")
    plain, _ = build([D(6, "tanh"), D(K, "softmax")], "sparse_categorical_crossentropy")
    x, y = features(rng, 30), rng.integers(0, K, 30)
    m.fit(x, y, batch_size=8, epochs=1, verbose=0)  # a few steps: inference must not depend on the step
    plain.set_weights(m.get_weights())
    np.testing.assert_array_equal(m.predict(x), plain.predict(x))
    np.testing.assert_array_equal(m.predict(x), m.predict(x))
    assert m.evaluate(x, y) == plain.evaluate(x, y)
    # while training-mode gradients do drop values
    assert any(not np.array_equal(a, b) for a, b in zip(m.compute_gradients(x, y), plain.compute_gradients(x, y)))


# -------------------------------------------------- PyTorch's and Keras's formulas
# Written out from their documentation / source (torch and keras are not imported): PyTorch's
# BatchNorm1d in training (biased variance to normalize) and its backward (ATen's
# batch_norm_backward), Keras 3's BatchNormalization (ops.batch_normalization, moving averages)
# and LayerNormalization (ops.moments, rsqrt), and PyTorch's LayerNorm backward.

def torch_batch_norm1d_train(x, weight, bias, eps):
    mean = x.mean(axis=0)
    var = x.var(axis=0)  # "the biased estimator", as torch.nn.BatchNorm1d normalizes
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def torch_batch_norm1d_backward(grad_out, x, weight, eps):
    """(grad_input, grad_weight, grad_bias) as ATen's batch_norm_backward computes them."""
    n = x.shape[0]
    mean, invstd = x.mean(axis=0), 1 / np.sqrt(x.var(axis=0) + eps)
    dotp = (grad_out * (x - mean)).sum(axis=0)
    grad_mean = grad_out.sum(axis=0) / n
    proj = (x - mean) * (dotp * invstd * invstd / n)
    return (grad_out - proj - grad_mean) * invstd * weight, dotp * invstd, grad_out.sum(axis=0)


def torch_layer_norm_backward(grad_out, x, weight, eps):
    """(grad_input, grad_weight, grad_bias) of torch.nn.LayerNorm over the last axis."""
    mean, rstd = x.mean(axis=1, keepdims=True), 1 / np.sqrt(x.var(axis=1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    g = grad_out * weight
    grad_input = rstd * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))
    return grad_input, (grad_out * xhat).sum(axis=0), grad_out.sum(axis=0)


def keras_batch_normalization(x, gamma, beta, moving_mean, moving_variance, momentum, epsilon, training):
    """(outputs, new moving_mean, new moving_variance) of Keras 3's BatchNormalization.call."""
    if training:
        mean, variance = x.mean(axis=0), ((x - x.mean(axis=0)) ** 2).mean(axis=0)  # ops.moments
        moving_mean = moving_mean * momentum + mean * (1.0 - momentum)
        moving_variance = moving_variance * momentum + variance * (1.0 - momentum)
    else:
        mean, variance = moving_mean, moving_variance
    inv = 1 / np.sqrt(variance + epsilon) * gamma  # ops.batch_normalization
    return x * inv + (beta - mean * inv), moving_mean, moving_variance


def keras_layer_normalization(x, gamma, beta, epsilon):
    mean = x.mean(axis=1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=1, keepdims=True)
    inv = 1 / np.sqrt(variance + epsilon) * gamma
    return x * inv + (-mean * inv + beta)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["batch", "layer"])
def test_normalization_matches_pytorch_and_keras_formulas(kind, dtype):
    """Model Dense(d) -> Norm -> Dense(n) fed x = I_n, so the normalization's input is W1 = X
    (n x d data) and dL/dW1 its input gradient. With W2 = 0 and mse against I_n, dL/dW2 =
    -2/n^2 * output^T gives the training-mode output element by element; with W2 random the
    upstream gradient is known and the backward pass is compared."""
    n, d, eps, momentum = 8, 5, 1e-3, 0.9
    rng = np.random.default_rng(8)
    rnd = lambda *shape, s=1.0, c=0.0: (c + s * rng.normal(size=shape)).astype(dtype).astype(np.float64)  # noqa: E731
    X, gamma, beta, W2, b2 = rnd(n, d, s=2.0, c=0.5), rnd(d, s=0.3, c=1.0), rnd(d, s=0.3), rnd(d, n), rnd(n, s=0.2)
    norm = fm.BatchNormalization(momentum, eps) if kind == "batch" else fm.LayerNormalization(eps)
    m = fm.Sequential([fm.Dense(d, input_dim=n), norm, fm.Dense(n)], seed=0)
    m.compile(fm.optimizers.SGD(lr=0.0), "mse", device="cpu", dtype=dtype)
    moving = [rnd(d, s=0.5), np.abs(rnd(d)) + 0.5] if kind == "batch" else []
    m.set_weights([X, np.zeros(d), gamma, beta, *moving, np.zeros((d, n)), np.zeros(n)])
    eye, tol = np.eye(n), TOL[dtype]
    if kind == "batch":
        want_train = torch_batch_norm1d_train(X, gamma, beta, eps)
        keras_train, new_mean, new_var = keras_batch_normalization(X, gamma, beta, *moving, momentum, eps, True)
        assert_close(keras_train, want_train, 1e-13, "Keras vs PyTorch training forward")
        want_infer = keras_batch_normalization(X, gamma, beta, *moving, momentum, eps, False)[0]
    else:
        want_train = want_infer = keras_layer_normalization(X, gamma, beta, eps)
    # training-mode forward, element by element
    assert_close(m.compute_gradients(eye, eye)[-2] * (-n * n / 2), want_train.T, tol, "training forward")
    # inference forward: W2 = [I 0] passes the normalization's output to the first d outputs
    m.set_weights([X, np.zeros(d), gamma, beta, *moving, np.eye(d, n), np.zeros(n)])
    assert_close(m.predict(eye)[:, :d], want_infer, tol, "inference forward")
    # backward with a known upstream gradient
    m.set_weights([X, np.zeros(d), gamma, beta, *moving, W2, b2])
    grads = m.compute_gradients(eye, eye)
    upstream = 2 * (want_train @ W2 + b2 - eye) / (n * n) @ W2.T
    backward = torch_batch_norm1d_backward if kind == "batch" else torch_layer_norm_backward
    dx, dgamma, dbeta = backward(upstream, X, gamma, eps)
    assert_close(grads[0], dx, tol, "input gradient")
    assert_close(grads[2], dgamma, tol, "gamma gradient")
    assert_close(grads[3], dbeta, tol, "beta gradient")
    if kind == "batch":  # one step (lr 0): the moving statistics average in the biased variance
        m.train_on_batch(eye, eye)
        assert_close(m.get_weights()[4], new_mean, tol, "moving mean")
        assert_close(m.get_weights()[5], new_var, tol, "moving variance")
        torch_running_var = momentum * moving[1] + (1 - momentum) * X.var(axis=0, ddof=1)
        assert np.abs(m.get_weights()[5] - torch_running_var).max() > 1e-3  # not PyTorch's unbiased one


# ---------------------------------------------------------------------- bad input

BAD_LAYERS = [
    (lambda: fm.Dropout(-0.1), "rate"), (lambda: fm.Dropout(1.0), "rate"), (lambda: fm.Dropout(float("nan")), "rate"),
    (lambda: fm.Dropout(1.5), "rate"),
    (lambda: fm.BatchNormalization(momentum=-0.1), "momentum"),
    (lambda: fm.BatchNormalization(momentum=1.01), "momentum"),
    (lambda: fm.BatchNormalization(momentum=float("nan")), "momentum"),
    (lambda: fm.BatchNormalization(epsilon=0.0), "epsilon"), (lambda: fm.BatchNormalization(epsilon=-1e-3), "epsilon"),
    (lambda: fm.BatchNormalization(epsilon=float("nan")), "epsilon"),
    (lambda: fm.LayerNormalization(epsilon=0.0), "epsilon"), (lambda: fm.LayerNormalization(epsilon=-1.0), "epsilon"),
    (lambda: fm.Activation("mish"), "unknown activation 'mish'"), (lambda: fm.Dense(3, activation="hard_swish"),
                                                                 "hard_swish"),
    (lambda: fm.Activation(None), "Activation needs an activation"),
]


@pytest.mark.parametrize("make,match", BAD_LAYERS, ids=[m for _, m in BAD_LAYERS])
def test_bad_layer_arguments_raise_and_leave_the_model_unchanged(make, match):
    m = fm.Sequential([fm.Dense(5, "tanh", input_dim=3)], seed=0)
    with pytest.raises(ValueError, match=match):
        m.add(make())
    assert len(m.layers) == 1
    # the model still works as it was
    m.add(fm.Dense(2, "softmax"))
    m.compile("sgd", "sparse_categorical_crossentropy", device="cpu")
    assert m.predict(np.zeros((1, 3))).shape == (1, 2)


@pytest.mark.parametrize("make", [lambda **k: fm.Dropout(0.2, **k), lambda **k: fm.BatchNormalization(**k),
                                  lambda **k: fm.LayerNormalization(**k), lambda **k: fm.Activation("relu", **k)],
                         ids=["Dropout", "BatchNormalization", "LayerNormalization", "Activation"])
def test_non_dense_first_layer_needs_input_dim(make):
    name = type(make()).__name__
    with pytest.raises(ValueError, match=f"{name} as the first layer needs input_dim"):
        fm.Sequential([make(), fm.Dense(2)])
    m = fm.Sequential()
    with pytest.raises(ValueError, match="input_dim"):
        m.add(make())
    assert m.layers == []
    m.add(make(input_dim=3))  # with input_dim (or input_shape) it is fine
    m.add(fm.Dense(2))
    m.compile("sgd", "mse", device="cpu")
    assert m.predict(np.ones((2, 3))).shape == (2, 2)
    assert fm.Sequential([make(input_shape=(3,)), fm.Dense(2)]).input_dim == 3


@pytest.mark.parametrize("layers", [
    lambda: [fm.Dense(4, input_dim=3), fm.Activation("softmax"), fm.Dense(2)],
    lambda: [fm.Dense(4, "softmax", input_dim=3), fm.Activation("relu")],
    lambda: [fm.Dense(4, input_dim=3), fm.Activation("softmax"), fm.Dropout(0.1)],
    lambda: [fm.Dense(4, input_dim=3), fm.Activation("softmax"), fm.BatchNormalization()],
], ids=["before_dense", "dense_softmax_then_activation", "before_dropout", "before_batchnorm"])
def test_softmax_not_last_is_refused_and_leaves_the_model_uncompiled(layers):
    m = fm.Sequential(layers(), seed=0)
    with pytest.raises(ValueError, match="softmax is only supported as the model's last activation"):
        m.compile("sgd", "mse", device="cpu")
    assert m.optimizer is None and not m.built


def test_softmax_added_after_compile_is_refused_at_build():
    """Layers may still be added to a compiled model whose input width is unknown; the native
    check refuses softmax in the middle when fit builds it, and the model stays unbuilt."""
    m = fm.Sequential([fm.Dense(4)], seed=0)
    m.compile("sgd", "mse", device="cpu")
    m.add(fm.Activation("softmax"))
    m.add(fm.Dense(2))
    with pytest.raises(ValueError, match="softmax is only supported as the model's last activation"):
        m.fit(np.zeros((3, 5)), np.zeros((3, 2)), verbose=0)
    assert not m.built and m.input_dim is None


def test_bad_weights_for_new_layers_leave_the_model_unchanged():
    m, spec = build([D(5), BN(), DO(0.2, 1), LN(), D(K, "softmax")], "sparse_categorical_crossentropy")
    before = m.get_weights()
    shapes = ref.weight_shapes(spec, N_IN)
    good = random_weights(spec, np.random.default_rng(9))
    for bad, match in [(good[:-1], "expects"), (good[:2] + [np.ones(6)] + good[3:], "shape"),
                       (good[:4] + [np.full(5, np.nan)] + good[5:], "NaN")]:
        with pytest.raises(ValueError, match=match):
            m.set_weights(bad)
        assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), before))
    assert [w.shape for w in before] == shapes
