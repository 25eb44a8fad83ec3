"""Each backend operation on its own, against tests/reference.py (float64 NumPy), on every backend
this machine has: the CPU always, a GPU when there is one (fastmlp._core.BackendOps*, one
operation per call). The model tests say that training went wrong; these say which operation.
Shapes are odd on purpose (widths that are not multiples of a vector, a tile or a warp)."""
import numpy as np
import pytest

import fastmlp as fm
import reference as ref

_core = fm._core
ACT = _core.ACTIVATION_KINDS
LOSS = _core.LOSS_KINDS
FURTHER = _core.FURTHER_METRIC_KINDS
RNG = np.random.default_rng(7)

BACKENDS = [("cpu", np.float64), ("cpu", np.float32)]
if _core.cuda_info()["available"]:
    BACKENDS.append(("cuda", np.float32))
IDS = [f"{d}-{np.dtype(t).name}" for d, t in BACKENDS]


@pytest.fixture(params=BACKENDS, ids=IDS)
def backend(request):
    device, dtype = request.param
    ops = (_core.BackendOps64 if dtype == np.float64 else _core.BackendOps32)(device)
    return ops, dtype


def tol(dtype):
    return dict(rtol=1e-11, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)


def close_sums(got, want, dtype, factor=10):
    """For sums of products (GEMMs, column sums): float32's rounding grows with the terms, not
    with a result that cancels, so the absolute tolerance follows the largest result."""
    r = tol(dtype)["rtol"] * factor
    np.testing.assert_allclose(got, want, rtol=r, atol=r * max(1.0, float(np.abs(want).max())))


def rand(dtype, *shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(dtype)


SHAPES = [(1, 1), (3, 17), (33, 129), (130, 7)]
# The hidden activations (softmax is an output's only); their parameters as Keras's defaults.
HIDDEN = {"linear": 0.0, "sigmoid": 0.0, "tanh": 0.0, "relu": 0.0, "leaky_relu": 0.3, "elu": 1.0,
          "exponential": 0.0, "softplus": 0.0, "selu": 0.0, "gelu": 0.0, "silu": 0.0}


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
# One row is a matrix-vector product on the CPU (GEMV), also per thread when a batch of one is split
# by depth (k * n >= 2^15), and in the one-row block of 9 rows split in blocks of 8 (9 x 8 x 30000
# is split by rows over 2 threads: with ta, that row is every 9th value of A).
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 130, 17), (1, 100, 784), (5, 130, 17), (129, 3, 64),
                                   (9, 8, 30000)])
def test_matmul(backend, ta, tb, m, n, k):
    ops, dtype = backend
    A, B = rand(dtype, m, k), rand(dtype, k, n)
    C = ops.matmul(ta, tb, np.ascontiguousarray(A.T) if ta else A, np.ascontiguousarray(B.T) if tb else B)
    close_sums(C, A.astype(np.float64) @ B.astype(np.float64), dtype)


# GELU and SiLU never fuse into a Dense: their derivative needs the input (math::grad_needs_input),
# so the engine puts them in an Activation op after a linear Dense.
DENSE_ACTS = sorted(set(HIDDEN) - {"gelu", "silu"})


@pytest.mark.parametrize("act", DENSE_ACTS)
@pytest.mark.parametrize("rows,in_,out,out2", [(1, 3, 5, 2), (1, 784, 100, 10), (37, 19, 131, 10), (128, 64, 64, 33)])
def test_dense_forward_and_the_next_layers_backward(backend, act, rows, in_, out, out2):
    """Layer 1's forward (the fused bias and activation, any record it keeps) and layer 2's
    backward into layer 1's dZ (the activation's derivative, from the record or the output)."""
    ops, dtype = backend
    X, W1, b1 = rand(dtype, rows, in_), rand(dtype, in_, out, scale=0.5), rand(dtype, out, scale=0.5)
    W2, dZ2 = rand(dtype, out, out2), rand(dtype, rows, out2)
    r = ops.dense(X, W1, b1, ACT[act], HIDDEN[act], W2, dZ2)
    x, w1, w2, dz2 = (a.astype(np.float64) for a in (X, W1, W2, dZ2))
    z1 = x @ w1 + b1.astype(np.float64)
    y1 = ref.act_forward(act, HIDDEN[act], z1)
    close_sums(r["Y1"], y1, dtype)
    # The backward pass reads the Y1 the backend computed, so compare with the reference on it.
    y1_got = r["Y1"].astype(np.float64)
    close_sums(r["dW2"], y1_got.T @ dz2, dtype)
    close_sums(r["db2"], dz2.sum(axis=0), dtype)
    dz1 = (dz2 @ w2.T) * ref.act_derivative(act, HIDDEN[act], z1)
    close_sums(r["dZ1"], dz1, dtype)
    if r["db1"] is not None:
        close_sums(r["db1"], r["dZ1"].astype(np.float64).sum(axis=0), dtype)


@pytest.mark.parametrize("act", sorted(HIDDEN))
@pytest.mark.parametrize("shape", SHAPES)
def test_activation_forward_and_backward(backend, act, shape):
    ops, dtype = backend
    X, dY = rand(dtype, *shape, scale=2.0), rand(dtype, *shape)
    x = X.astype(np.float64)
    t = tol(dtype)
    Y = ops.activation_forward(X, ACT[act], HIDDEN[act])
    np.testing.assert_allclose(Y, ref.act_forward(act, HIDDEN[act], x), rtol=t["rtol"] * 10, atol=t["atol"])
    # The producer of X had a tanh: its derivative 1 - X^2 (X as tanh's output) is chained in.
    x_in = np.tanh(x).astype(dtype)
    dX = ops.activation_backward(x_in, ops.activation_forward(x_in, ACT[act], HIDDEN[act]), dY, ACT[act],
                                 HIDDEN[act], ACT["tanh"], 0.0)
    xi = x_in.astype(np.float64)
    want = dY * ref.act_derivative(act, HIDDEN[act], xi) * (1 - xi * xi)
    np.testing.assert_allclose(dX, want, rtol=t["rtol"] * 10, atol=t["atol"] * 10)


@pytest.mark.parametrize("act,param", [("softmax", 0.0), ("sigmoid", 0.0), ("exponential", 0.0), ("tanh", 0.0),
                                       ("elu", 1.0), ("softplus", 0.0)])
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (17, 1000), (64, 17)])
def test_output_activation(backend, act, param, shape):
    ops, dtype = backend
    Z = rand(dtype, *shape, scale=3.0)
    t = tol(dtype)
    np.testing.assert_allclose(ops.output_activation(Z, ACT[act], param),
                               ref.act_forward(act, param, Z.astype(np.float64)), rtol=t["rtol"] * 10, atol=t["atol"])


@pytest.mark.parametrize("rows,cols,row_offset", [(1, 1, 0), (3, 65, 0), (7, 63, 5), (130, 129, 11)])
@pytest.mark.parametrize("step", [0, 2 ** 33 + 3])
def test_dropout_masks_are_the_references_at_any_offset(backend, rows, cols, row_offset, step):
    """row_offset is where a rank's slice starts in the global batch (data-parallel training):
    its masks continue the global batch's, blocks of 64 straddling the slice's edges."""
    ops, dtype = backend
    seed, rate = 2 ** 64 - 3, 0.35
    X = (np.abs(rand(dtype, rows, cols)) + 0.5).astype(dtype)
    keep = ref.dropout_keep(seed, step, rows, cols, rate, first=row_offset * cols)
    scale = 1.0 / (1.0 - rate)
    Y = ops.dropout_forward(X, seed, rate, step, row_offset)
    np.testing.assert_array_equal(Y != 0, keep)
    np.testing.assert_allclose(Y, np.where(keep, X.astype(np.float64) * scale, 0.0), **tol(dtype))
    dY = rand(dtype, rows, cols)
    dX = ops.dropout_backward(X, dY, seed, rate, step, row_offset, ACT["relu"], 0.0)  # X > 0: relu' = 1
    np.testing.assert_allclose(dX, np.where(keep, dY.astype(np.float64) * scale, 0.0), **tol(dtype))


@pytest.mark.parametrize("axis", [0, 1], ids=["batch", "features"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(2, 1), (5, 3), (33, 130)])
def test_normalization_forward_and_backward(backend, axis, affine, shape):
    ops, dtype = backend
    rows, cols = shape
    eps = 1e-3
    X, dY = rand(dtype, rows, cols, scale=2.0) + 1.0, rand(dtype, rows, cols)
    gamma, beta = (rand(dtype, cols) + 1.0, rand(dtype, cols)) if affine else (None, None)
    r = ops.normalize(axis, eps, X, gamma, beta, dY, ACT["linear"], 0.0)
    x, dy = X.astype(np.float64), dY.astype(np.float64)
    red = 0 if axis == 0 else 1
    mean, var = x.mean(axis=red, keepdims=True), x.var(axis=red, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    g = gamma.astype(np.float64) if affine else np.ones(cols)
    b = beta.astype(np.float64) if affine else np.zeros(cols)
    t = tol(dtype)
    loose = dict(rtol=t["rtol"] * 50, atol=t["atol"] * 50)
    np.testing.assert_allclose(r["Y"], g * xhat + b, **loose)
    np.testing.assert_allclose(r["xhat"], xhat, **loose)
    if axis == 0:
        np.testing.assert_allclose(r["mean"], mean.ravel(), **loose)
        np.testing.assert_allclose(r["var"], var.ravel(), **loose)
    np.testing.assert_allclose(r["dgamma"], (dy * xhat).sum(axis=0), **loose)
    np.testing.assert_allclose(r["dbeta"], dy.sum(axis=0), **loose)
    dx = ref.normalization_input_grad(dy * g, x, mean, var, eps, axis=red)
    np.testing.assert_allclose(r["dX"], dx, **loose)


@pytest.mark.parametrize("loss,out_act,from_logits", ref.LOSS_OUTPUTS)
@pytest.mark.parametrize("rows,k", [(1, 3), (37, 10), (5, 1000)])
def test_loss_and_its_gradient(backend, loss, out_act, from_logits, rows, k):
    ops, dtype = backend
    if loss == "binary_crossentropy":
        k = min(k, 4)
    Z = rand(dtype, rows, k, scale=2.0)
    if loss in ("sparse_categorical_crossentropy", "multiclass_hinge"):
        y = RNG.integers(0, k, rows)
        Y = y.astype(dtype)[:, None]
    elif loss == "categorical_crossentropy":
        Y = np.eye(k)[RNG.integers(0, k, rows)].astype(dtype)
        y = Y
    elif loss in ("binary_crossentropy", "poisson"):
        Y = RNG.random((rows, k)).round().astype(dtype) if loss == "binary_crossentropy" else \
            RNG.poisson(1.0, (rows, k)).astype(dtype)
        y = Y.astype(np.float64)
    else:
        Y = rand(dtype, rows, k)
        y = Y.astype(np.float64)
    r = ops.loss(Z, Y, False, LOSS[loss], 0.0 if loss != "huber" else ref.HUBER_DELTA, 0, ACT[out_act], 0.0)
    want_loss, want_grad = ref.loss_and_grad(loss, out_act, 0.0, Z.astype(np.float64), y)
    t = tol(dtype)
    assert not r["nonfinite"]
    assert r["loss_sum"] / rows == pytest.approx(want_loss, rel=t["rtol"] * 10, abs=t["atol"] * 10)
    np.testing.assert_allclose(r["dZ"], want_grad, rtol=t["rtol"] * 10, atol=t["atol"] / max(rows, 1))


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_gradient_as_a_share_of_a_global_batch(backend, weighted):
    # A data-parallel rank's 7 rows of a global batch of 19: its dZ is what a single process
    # computes for those rows (the mean over 19), while the loss sum stays its own rows'.
    ops, dtype = backend
    Z = rand(dtype, 7, 5, scale=2.0)
    Y = RNG.integers(0, 5, 7).astype(dtype)[:, None]
    if weighted:
        Y = np.hstack([Y, (RNG.random((7, 1)) + 0.5).astype(dtype)])
    sce = LOSS["sparse_categorical_crossentropy"]
    own = ops.loss(Z, Y, weighted, sce, 0.0, 0, ACT["softmax"], 0.0)
    share = ops.loss(Z, Y, weighted, sce, 0.0, 0, ACT["softmax"], 0.0, gradient_rows=19)
    assert share["loss_sum"] == own["loss_sum"]
    w = Y[:, 1].astype(np.float64) if weighted else np.ones(7)
    _, grad = ref.loss_and_grad("sparse_categorical_crossentropy", "softmax", 0.0, Z.astype(np.float64),
                                Y[:, 0].astype(np.int64))
    want = grad * 7 / 19 * w[:, None]  # the reference's mean over the 7 rows, rescaled to 19
    t = tol(dtype)
    np.testing.assert_allclose(share["dZ"], want, rtol=t["rtol"] * 10, atol=t["atol"] / 19)
    np.testing.assert_allclose(share["dZ"] * 19, own["dZ"] * 7, rtol=t["rtol"] * 10, atol=t["atol"])


def test_loss_flags_a_non_finite_row(backend):
    ops, dtype = backend
    Z = rand(dtype, 9, 4)
    Z[4, 2] = np.nan
    r = ops.loss(Z, np.zeros((9, 1), dtype), False, LOSS["sparse_categorical_crossentropy"], 0.0, 0, ACT["softmax"], 0.0)
    assert r["nonfinite"]


@pytest.mark.parametrize("rows,k", [(1, 2), (45, 10), (7, 1000)])
def test_metrics_slots(backend, rows, k):
    """Accuracy, top-3, MAE, precision and AUC's histograms, as Keras defines them, over
    softmax probabilities (class-id targets)."""
    ops, dtype = backend
    Z = rand(dtype, rows, k, scale=2.0)
    y = RNG.integers(0, k, rows)
    kinds = [(FURTHER["accuracy"], 0), (FURTHER["top_k"], 3), (FURTHER["mae"], 0), (FURTHER["precision"], 0),
             (FURTHER["auc"], 0)]
    slots = ops.metrics(Z, y.astype(dtype)[:, None], True, LOSS["sparse_categorical_crossentropy"], ACT["softmax"],
                        0.0, kinds)
    z = Z.astype(np.float64)
    p, onehot = ref.act_forward("softmax", 0.0, z), np.eye(k)[y]
    assert slots[0] == np.sum(z.argmax(1) == y)
    assert slots[1] == np.sum((z > z[np.arange(rows), y][:, None]).sum(1) < 3)
    assert slots[2] == pytest.approx(np.abs(p - onehot).mean(axis=1).sum(), rel=1e-5)
    predicted, actual = p > 0.5, onehot > 0.5
    assert slots[3] == np.sum(predicted & actual) and slots[4] == predicted.sum()
    bins = _core.AUC_BINS
    hist = slots[5:5 + 2 * bins]
    assert hist[:bins].sum() == rows and hist[bins:].sum() == rows * (k - 1)  # positives, negatives


OPT_CLASS = {"sgd": fm.optimizers.SGD, "adam": fm.optimizers.Adam, "rmsprop": fm.optimizers.RMSprop}


@pytest.mark.parametrize("kind,kwargs", [("sgd", dict(lr=0.1, momentum=0.9, nesterov=True)), ("adam", dict(lr=0.01)),
                                         ("rmsprop", dict(lr=0.01, alpha=0.9, centered=True))])
@pytest.mark.parametrize("n", [1, 100, 4099])
@pytest.mark.parametrize("l2", [0.0, 1e-2])
def test_optimizer_steps(backend, kind, kwargs, n, l2):
    """Three steps, each from the state the last one returned, against the reference optimizer
    (torch.optim's formulas) on the gradient plus the L2 term, and the penalty each reports."""
    ops, dtype = backend
    config = OPT_CLASS[kind](**kwargs).native()
    rest = dict(kwargs)
    opt = ref.Optimizer(kind, rest.pop("lr"), **rest)
    p, state = rand(dtype, n), np.zeros((_core.optimizer_state_slots(config), n), dtype)
    t = tol(dtype)
    for step in range(3):
        g = rand(dtype, n)
        r = ops.optimizer_step(p, g, state, config, 0.0, l2, step, 1)
        assert not r["nonfinite"] and r["step"] == step + 1
        w = p.astype(np.float64)
        assert r["reg_sum"] == pytest.approx(l2 * np.sum(w * w), rel=t["rtol"] * 10, abs=1e-300)
        want = opt.step([w], [g.astype(np.float64) + 2 * l2 * w])[0]
        np.testing.assert_allclose(r["params"], want, rtol=t["rtol"] * 100, atol=t["atol"] * 10)
        p, state = r["params"], r["state"]


def test_an_overflowing_update_keeps_the_parameter_and_flags_the_step(backend):
    ops, dtype = backend
    config = fm.optimizers.SGD(lr=1.0).native()
    big = np.finfo(dtype).max
    p = np.array([1.0, -big, 2.0], dtype)
    r = ops.optimizer_step(p, np.array([0.5, big, 0.25], dtype), np.zeros((0, 3), dtype), config, 0.0, 0.0, 4, 1)
    # The other parameters are updated and the step counts; later steps are skipped (the engine
    # undoes this one whole where it must: train_on_batch).
    assert r["nonfinite"] and r["step"] == 5
    np.testing.assert_array_equal(r["params"], np.array([0.5, -big, 1.75], dtype))
