"""The CPU's float exp and tanh (csrc/fastmlp/elementary.h) and the sigmoid built on exp.

They are evaluated through models whose weights are identities, so each output is the activation of
exactly the input: as an output activation (predict's row pass) and as a hidden layer's (the
vectorized element-wise pass). Checked three ways: accuracy in ulps against float64 NumPy, special
values (overflow, underflow, infinities, NaN), and bit for bit against a float32 NumPy replica of
the same operations, which shows that no vector width or fused multiply-add changed a rounding."""
import math

import numpy as np
import pytest

import fastmlp as fm

f32 = np.float32


def through_output(activation, x):
    n = x.shape[1]
    m = fm.Sequential([fm.Dense(n, activation, input_dim=n)], seed=0)
    m.compile(optimizer="sgd", loss="mse", device="cpu")
    m.set_weights([np.eye(n, dtype=f32), np.zeros(n, f32)])
    return m.predict(x)


def through_hidden(activation, x):
    n = x.shape[1]
    m = fm.Sequential([fm.Dense(n, activation, input_dim=n), fm.Dense(n, "linear")], seed=0)
    m.compile(optimizer="sgd", loss="mse", device="cpu")
    eye, zero = np.eye(n, dtype=f32), np.zeros(n, f32)
    m.set_weights([eye, zero, eye, zero])
    return m.predict(x)


def ulps(got, want64):
    """|got - want| in units of the last place of want rounded to float32."""
    spacing = np.spacing(np.abs(want64.astype(f32))).astype(np.float64)
    return np.abs(got.astype(np.float64) - want64) / spacing


def grid(lo, hi, cols=64):
    rng = np.random.default_rng(0)
    v = np.concatenate([np.linspace(lo, hi, 100_000), rng.normal(0.0, 1.0, 30_000), rng.normal(0.0, 1e-3, 2_000),
                        np.linspace(-0.7, 0.7, 30_000)]).astype(f32)
    v = v[(v >= lo) & (v <= hi)]
    return v[: len(v) // cols * cols].reshape(-1, cols)


def np_sigmoid(z):
    return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))


def np_gelu(z):
    return 0.5 * z * (1.0 + np.vectorize(math.erf)(z / np.sqrt(2.0)))


CASES = {  # activation: (float64 reference, input range with normal results, max ulps)
    "exponential": (np.exp, (-87.0, 88.72), 1.0),
    "tanh": (np.tanh, (-12.0, 12.0), 1.5),
    "sigmoid": (np_sigmoid, (-87.0, 40.0), 2.5),
    # 1 + erf cancels for z < 0: in ulps only where z > -1 (libm's erff gave 2.3 there), about 1e-7
    # absolute below (test_gelu_below_minus_one).
    "gelu": (np_gelu, (-1.0, 12.0), 3.0),
}


def rows_of_64(v):
    return v[: len(v) // 64 * 64].reshape(-1, 64)


def test_gelu_where_one_plus_erf_cancels():
    # Every float in [-1, -0.9), where GELU's error in ulps is largest (2.6 at -0.998) ...
    x = rows_of_64(-every_float(0.9, 1.0))
    assert ulps(through_hidden("gelu", x), np_gelu(x.astype(np.float64))).max() <= 3.0
    # ... and below -1 about 1e-7 absolute, as libm's erf gave.
    x = rows_of_64(np.concatenate([grid(-12.0, -1.0).ravel(), -every_float(1.0, 1.05)]))
    err = np.abs(through_hidden("gelu", x) - np_gelu(x.astype(np.float64)))
    assert err.max() < 1.5e-7, float(err.max())


@pytest.mark.parametrize("path", [through_output, through_hidden])
@pytest.mark.parametrize("activation", sorted(CASES))
def test_accuracy_in_ulps(activation, path):
    reference, (lo, hi), bound = CASES[activation]
    x = grid(lo, hi)
    got = path(activation, x)
    want = reference(x.astype(np.float64))
    err = ulps(got, want)
    assert err.max() <= bound, (activation, float(err.max()), float(x.ravel()[np.argmax(err)]))
    assert err.mean() < 0.4  # most results are correctly rounded


# A float32 NumPy replica of elementary.h, operation for operation (NumPy rounds each to float32
# and forms no fused multiply-add).
def replica_exp(x):
    c = np.where(x > f32(-104), x, f32(-104)).astype(f32)
    c = np.where(c < f32(89), c, f32(89)).astype(f32)
    t = c * f32(1.44269504088896341)
    fn = (t + f32(12582912.0)) - f32(12582912.0)
    r = (c - fn * f32(0.693359375)) + fn * f32(2.12194440e-4)
    p = f32(1.9875691500e-4)
    for coefficient in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + f32(coefficient)
    p = p * (r * r) + r + f32(1.0)
    n = fn.astype(np.int32)
    half = np.fix(n / 2).astype(np.int32)  # C's division truncates toward zero

    def pow2(k):
        return ((k + 127).astype(np.uint32) << np.uint32(23)).view(f32)

    with np.errstate(over="ignore"):  # e^x overflows to inf where it should
        return np.where(np.isnan(x), x, (p * pow2(half)) * pow2(n - half))


def replica_tanh(x):
    a = np.abs(x)
    z = x * x
    p = f32(-5.70498872745e-3)
    for coefficient in (2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1):
        p = p * z + f32(coefficient)
    small = x + x * (z * p)
    large = f32(1.0) - f32(2.0) / (replica_exp(f32(2.0) * a) + f32(1.0))
    y = np.where(a < f32(0.625), small, np.where(x < 0, -large, large))
    return np.where(x == 0, x, y)


def replica_sigmoid(z):
    e = replica_exp(-np.abs(z))
    return np.where(z >= 0, f32(1.0), e) / (f32(1.0) + e)


def replica_erf(x):
    z = x * x
    q = f32(8.010494639e-05)
    for coefficient in (-8.051754558e-04, 5.192274228e-03, -2.685540728e-02, 1.128361002e-01, -3.761262596e-01,
                        1.283791661e-01):
        q = q * z + f32(coefficient)
    small = x + x * q
    a = np.abs(x)
    a = np.where(a < f32(4), a, f32(4)).astype(f32)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # x = 0: the small branch is taken
        t = f32(1) / a
        g = f32(2.997928097e-02)
        for coefficient in (-1.749846363e-01, 4.252311423e-01, -5.168291927e-01, 2.190440811e-01, 2.422872032e-01,
                            -3.805767362e-01, 2.169396920e-02, 5.616079235e-01, 1.305572934e-04):
            g = g * t + f32(coefficient)
    large = f32(1) - replica_exp(-(a * a)) * g
    y = np.where(np.abs(x) < f32(1), small, np.where(x < 0, -large, large))
    return np.where(np.isnan(x), x, y)


def replica_gelu(z):  # math::activate: 0.5 z (1 + erf(z / sqrt 2)), in this order
    return f32(0.5) * z * (f32(1) + replica_erf(z * f32(0.70710678118654752440084436210485)))


REPLICAS = {"exponential": replica_exp, "tanh": replica_tanh, "sigmoid": replica_sigmoid, "gelu": replica_gelu}


@pytest.mark.parametrize("path", [through_output, through_hidden])
@pytest.mark.parametrize("activation", sorted(REPLICAS))
def test_bit_for_bit_the_replica(activation, path):
    # Normal results only: the CPU flushes subnormals (fm.set_flush_denormals), NumPy does not.
    # GELU also below -1, where erf's large branch takes negative arguments.
    _, (lo, hi), _ = CASES[activation]
    x = grid(-12.0 if activation == "gelu" else lo, hi)
    got = path(activation, x)
    want = REPLICAS[activation](x)
    assert got.dtype == want.dtype == f32
    different = got.view(np.uint32) != want.view(np.uint32)
    if path is through_hidden:  # the identity product after a hidden layer adds +0: -0 comes out +0
        different &= ~((got == 0) & (want == 0))
    assert not different.any(), (activation, x[different][:5], got[different][:5], want[different][:5])


def every_float(lo, hi):
    """Every float32 in [lo, hi) (lo, hi > 0)."""
    return np.arange(f32(lo).view(np.uint32), f32(hi).view(np.uint32), dtype=np.uint32).view(f32)


def test_erf_within_2_ulp():
    # The replica's erf is the CPU's bit for bit (the GELU cases of test_bit_for_bit_the_replica):
    # every float around the branch at 1 and the clamp at 4, and a grid elsewhere.
    edges = np.concatenate([every_float(0.95, 1.05), every_float(3.9, 4.1)])
    x = np.concatenate([edges, -edges, np.linspace(-5, 5, 100_001, dtype=f32), every_float(1e-30, 1.0001e-30)])
    want = np.vectorize(math.erf)(x.astype(np.float64))
    err = ulps(replica_erf(x), want)
    assert err.max() <= 2.0 and err.mean() < 0.5, (float(err.max()), float(x[np.argmax(err)]))


def test_special_values():
    # Inputs are multiples of 0.5 times 2^k, exact in float32; the identity kernel keeps them exact.
    x = np.array([[88.72283172607422, 88.72283935546875, 89.0, 100.0, 1e30, -1e30, -104.0, -200.0, 0.0, 1e-30,
                   -1e-30, 20.0, -20.0, 9.1, -9.1, 0.625]], f32)
    e = through_output("exponential", x)[0]
    assert np.isfinite(e[0]) and e[0] == f32(np.exp(np.float64(x[0, 0])))  # the largest finite e^x
    assert np.isposinf(e[1:5]).all()                                 # overflow from the next float on, as libm
    assert (e[5:8] == 0).all()                                               # underflow to 0
    assert e[8] == 1 and e[9] == 1 and e[10] == 1
    t = through_output("tanh", x)[0]
    assert (t[[0, 1, 2, 3, 4, 11]] == 1).all() and (t[[5, 6, 7, 12]] == -1).all()
    assert t[8] == 0 and t[9] == f32(1e-30) and t[10] == f32(-1e-30)  # tanh(x) = x for tiny x
    assert t[13] == -t[14] and abs(float(t[15]) - np.tanh(0.625)) < 1e-7
    s = through_output("sigmoid", x)[0]
    assert (s[[2, 3, 4]] == 1).all() and (s[[5, 7]] == 0).all() and s[8] == 0.5


def test_infinite_and_nan_logits():
    # A linear hidden layer overflows to [inf, inf]; the output layer's logits are inf + inf,
    # -inf - inf and inf - inf (NaN).
    x = np.array([[1e30]], f32)
    w_out = np.array([[1.0, -1.0, 1.0], [1.0, -1.0, -1.0]], f32)
    for activation, want in [("exponential", [np.inf, 0.0, np.nan]), ("tanh", [1.0, -1.0, np.nan]),
                             ("sigmoid", [1.0, 0.0, np.nan])]:
        m = fm.Sequential([fm.Dense(2, "linear", input_dim=1), fm.Dense(3, activation)], seed=0)
        m.compile(optimizer="sgd", loss="mse", device="cpu")
        m.set_weights([np.full((1, 2), 1e30, f32), np.zeros(2, f32), w_out, np.zeros(3, f32)])
        np.testing.assert_array_equal(m.predict(x)[0], np.array(want, f32), err_msg=activation)


def test_subnormal_results_follow_the_flush_setting():
    x = np.array([[-100.0, -90.0, -87.5, -87.0]], f32)
    want = np.exp(x.astype(np.float64))[0]
    before = fm.get_flush_denormals()
    try:
        fm.set_flush_denormals(False)
        ieee = through_output("exponential", x)[0]
        fm.set_flush_denormals(True)
        flushed = through_output("exponential", x)[0]
    finally:
        fm.set_flush_denormals(before)
    # IEEE: e^-100 and e^-90 are subnormal floats, rounded once (relative error grows as the
    # subnormal's precision shrinks: half its spacing, 2^-150).
    assert (ieee > 0).all() and (np.abs(ieee - want) <= 2.0 ** -150 * 1.01).all()
    if fm.get_flush_denormals() is not None and fm._core.flush_denormals_supported():
        assert flushed[0] == 0 and flushed[1] == 0      # flushed to zero
        assert flushed[3] == ieee[3] > np.finfo(f32).tiny  # normal results are the same either way
