"""The CPU's float exp, expm1, log1p, tanh and erf (csrc/fastmlp/elementary.h) and the activations
built on them (sigmoid, softplus, SELU, GELU).

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


SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def np_selu(z):
    return SELU_SCALE * np.where(z > 0, z, SELU_ALPHA * np.expm1(z))


CASES = {  # activation: (float64 reference, input range with normal results, max ulps)
    "exponential": (np.exp, (-87.0, 88.72), 1.0),
    "tanh": (np.tanh, (-12.0, 12.0), 1.5),
    "sigmoid": (np_sigmoid, (-87.0, 40.0), 2.5),
    # 1 + erf cancels for z < 0: in ulps only where z > -1 (libm's erff gave 2.3 there), about 1e-7
    # absolute below (test_gelu_below_minus_one).
    "gelu": (np_gelu, (-1.0, 12.0), 3.0),
    # log(1 + e^z) through log1p and exp; SELU through expm1 (libm's log1pf and expm1f before: scalar).
    "softplus": (lambda z: np.logaddexp(0.0, z), (-87.0, 88.0), 2.0),
    "selu": (np_selu, (-87.0, 88.0), 2.0),
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
def pow2(k):
    return ((k + 127).astype(np.uint32) << np.uint32(23)).view(f32)


def replica_reduce_by_ln2(x):
    t = x * f32(1.44269504088896341)
    n = (t + f32(12582912.0)) - f32(12582912.0)
    return n, (x - n * f32(0.693359375)) + n * f32(2.12194440e-4)


def replica_times_pow2(v, n):
    half = np.fix(n / 2).astype(np.int32)  # C's division truncates toward zero
    with np.errstate(over="ignore"):  # to inf where v 2^n overflows
        return (v * pow2(half)) * pow2(n - half)


def replica_exp(x):
    c = np.where(x > f32(-104), x, f32(-104)).astype(f32)
    c = np.where(c < f32(89), c, f32(89)).astype(f32)
    fn, r = replica_reduce_by_ln2(c)
    p = f32(1.9875691500e-4)
    for coefficient in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + f32(coefficient)
    p = p * (r * r) + r + f32(1.0)
    return np.where(np.isnan(x), x, replica_times_pow2(p, fn.astype(np.int32)))


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


def replica_expm1(x):
    c = np.where(x > f32(-30), x, f32(-30)).astype(f32)
    c = np.where(c < f32(89), c, f32(89)).astype(f32)
    fn, r = replica_reduce_by_ln2(c)
    q = f32(2.48015873e-5)
    for coefficient in (1.98412698e-4, 1.38888889e-3, 8.33333333e-3, 4.16666667e-2, 1.66666667e-1, 0.5):
        q = q * r + f32(coefficient)
    p = r + (r * r) * q
    n = fn.astype(np.int32)
    s = pow2(np.minimum(n, 24))
    y = np.where(n > 24, replica_times_pow2(f32(1) + p, n), (s - f32(1)) + s * p)
    return np.where(np.isnan(x), x, np.where(x == 0, x, y))


def replica_log1p(x):
    with np.errstate(all="ignore"):  # the selects at the end replace what -1, < -1 and inf compute
        u = f32(1) + x
        bits = u.view(np.uint32)
        k = ((bits >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int32) - 127
        c = np.where(k > 0, f32(1) - (u - x), x - (u - f32(1))) / u
        c = np.where(k < 25, c, f32(0)).astype(f32)
        m = ((bits & np.uint32(0x7FFFFF)) | np.uint32(0x3F800000)).view(f32)
        above = m > f32(1.41421356)
        m = np.where(above, m * f32(0.5), m).astype(f32)
        k = np.where(above, k + 1, k)
        f = m - f32(1)
        e = k.astype(f32)
        z = f * f
        p = f32(7.0376836292e-2)
        for coefficient in (-1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
                            2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1):
            p = p * f + f32(coefficient)
        y = f * z * p
        y = y + (e * f32(-2.12194440e-4) + c)
        y = y + f32(-0.5) * z
        r = (f + y) + e * f32(0.693359375)
        r = np.where(x == np.inf, x, r)
        r = np.where(x == -1, f32(-np.inf), r)
        r = np.where(x < -1, f32(np.nan), r)
        r = np.where(x == 0, x, r)
        return np.where(np.isnan(x), x, r).astype(f32)


def replica_softplus(z):  # math::activate: max(z, 0) + log1p(e^-|z|)
    return np.where(z > 0, z, f32(0)) + replica_log1p(replica_exp(-np.abs(z)))


def replica_selu(z):  # math::activate: scale * (z > 0 ? z : alpha * expm1(z))
    return f32(SELU_SCALE) * np.where(z > 0, z, f32(SELU_ALPHA) * replica_expm1(z))


REPLICAS = {"exponential": replica_exp, "tanh": replica_tanh, "sigmoid": replica_sigmoid, "gelu": replica_gelu,
            "softplus": replica_softplus, "selu": replica_selu}


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


def test_expm1_and_log1p_in_ulps():
    # The replicas are the CPU's bit for bit (the softplus and SELU cases of
    # test_bit_for_bit_the_replica): every 97th float of each range, both signs, and every float
    # around the points where the reductions change branch (n = +-1 at +-ln2/2, the clamp at -30;
    # u = 2^k m with m above sqrt 2, and u = 2).
    def every(lo, hi, stride=97):
        return every_float(lo, hi)[::stride]

    x = np.concatenate([every(1e-30, 88.7), every_float(0.34, 0.36), every_float(29.9, 30.1)])
    x = np.concatenate([x, -x[x < 40]])
    err = ulps(replica_expm1(x), np.expm1(x.astype(np.float64)))
    assert err.max() <= 1.5 and err.mean() < 0.3, (float(err.max()), float(x[np.argmax(err)]))
    x = np.concatenate([every(1e-30, 3e38), -every(1e-30, 1.0), every_float(0.41, 0.42), every_float(0.999, 1.001),
                        -every_float(0.29, 0.3)])
    err = ulps(replica_log1p(x), np.log1p(x.astype(np.float64)))
    assert err.max() <= 1.0 and err.mean() < 0.3, (float(err.max()), float(x[np.argmax(err)]))
    # Special values (the replica's; the model-reachable ones are checked through a model below).
    with np.errstate(invalid="ignore"):
        s = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, -2.0, 1e-40, 100.0, -100.0], f32)
        e, l = replica_expm1(s), replica_log1p(s)
    assert e[0] == 0 and np.signbit(e[1]) and e[2] == np.inf and e[3] == -1 and np.isnan(e[4])
    assert e[7] == f32(1e-40) and e[8] == np.inf and e[9] == -1
    assert l[0] == 0 and np.signbit(l[1]) and l[2] == np.inf and np.isnan(l[3]) and np.isnan(l[4])
    assert l[5] == -np.inf and np.isnan(l[6]) and l[7] == f32(1e-40)


SELU_FLOOR = f32(SELU_SCALE) * -f32(SELU_ALPHA)  # scale * alpha * expm1(-inf), rounded as the CPU does


def test_softplus_and_selu_special_values():
    x = np.array([[0.0, 100.0, -100.0, 1e30, -1e30, 20.0, -20.0]], f32)
    sp = through_output("softplus", x)[0]
    assert sp[0] == f32(np.log(2.0)) and sp[1] == 100 and 0 <= sp[2] < 1e-38 and sp[3] == f32(1e30) and sp[4] == 0
    assert sp[5] == f32(20.0 + np.exp(-20.0)) and abs(float(sp[6]) - np.exp(-20.0)) <= np.spacing(f32(np.exp(-20.0)))
    se = through_output("selu", x)[0]
    assert se[0] == 0 and se[1] == f32(SELU_SCALE) * f32(100) and se[2] == SELU_FLOOR and se[4] == SELU_FLOOR
    assert abs(float(se[6]) - np_selu(-20.0)) < 1e-7


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
                             ("sigmoid", [1.0, 0.0, np.nan]), ("softplus", [np.inf, 0.0, np.nan]),
                             ("selu", [np.inf, SELU_FLOOR, np.nan])]:
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
