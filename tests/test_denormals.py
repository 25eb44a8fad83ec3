"""Subnormal floats in the CPU backend (csrc/cpu/denormals.h): flushed to zero during fastmlp's
calls by default, on every pool thread, and the caller's mode is back when each call returns."""
import json
import platform

import numpy as np
import pytest

import fastmlp as fm
from child_process import run_child

x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
needs_x86 = pytest.mark.skipif(not x86, reason="fastmlp flushes subnormals only on x86 CPUs")

# 1e-20 * 1e-20 is subnormal in float32 (FLT_MIN is 1.2e-38); 1e-160 * 1e-160 in float64.
TINY = {np.float32: 1e-20, np.float64: 1e-160}


@pytest.fixture(autouse=True)
def restore_setting():
    before = fm.get_flush_denormals()
    yield
    fm.set_flush_denormals(before)


def linear_model(dtype, inputs, units):
    """A linear Dense layer whose every weight is TINY: each output is a sum of subnormal products."""
    m = fm.Sequential([fm.Dense(units, activation="linear", input_dim=inputs)], seed=0)
    m.compile(optimizer="sgd", loss="mse", device="cpu", dtype="float64" if dtype is np.float64 else "float32")
    m.set_weights([np.full((inputs, units), TINY[dtype], dtype), np.zeros(units, dtype)])
    return m


def subnormal_sum(dtype, inputs):
    # NumPy in this thread keeps IEEE subnormals: the expected value without flushing.
    t = dtype(TINY[dtype])
    return np.sum(np.full(inputs, t * t, dtype), dtype=dtype)


@needs_x86
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_default_flushes_subnormal_results_and_false_keeps_them(dtype):
    m = linear_model(dtype, 2, 3)
    x = np.full((4, 2), TINY[dtype], dtype)
    assert fm.get_flush_denormals() is True
    assert np.all(m.predict(x) == 0)
    fm.set_flush_denormals(False)
    expected = subnormal_sum(dtype, 2)
    assert 0 < expected < np.finfo(dtype).tiny
    np.testing.assert_array_equal(m.predict(x), np.full((4, 3), expected, dtype))


@needs_x86
def test_the_calling_threads_mode_is_restored():
    m = linear_model(np.float32, 2, 3)
    m.predict(np.full((4, 2), 1e-20, np.float32))
    t = np.float32(1e-20)
    assert t * t > 0  # NumPy, after the call, in the same thread: still IEEE


@needs_x86
def test_pool_workers_take_the_callers_mode():
    # A product large enough to be split over the pool's threads: every row must follow the
    # setting, whichever mode the workers were started in or last ran.
    threads = fm.get_num_threads()
    fm.set_num_threads(3)
    try:
        m = linear_model(np.float32, 256, 256)
        x = np.full((2048, 256), 1e-20, np.float32)
        expected = subnormal_sum(np.float32, 256)
        for flush in (True, False, True, False):
            fm.set_flush_denormals(flush)
            out = m.predict(x)
            if flush:
                assert np.count_nonzero(out) == 0
            else:
                np.testing.assert_allclose(out, expected, rtol=1e-4)  # summation order: the BLAS's
                assert np.count_nonzero(out) == out.size
    finally:
        fm.set_num_threads(threads)


@needs_x86
def test_training_with_and_without_flushing_agrees():
    # Flushing changes only values below FLT_MIN; an ordinary fit ends where it would with IEEE.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 20)).astype(np.float32)
    y = rng.integers(0, 3, 600)

    def train(flush):
        fm.set_flush_denormals(flush)
        m = fm.Sequential([fm.Dense(32, "relu", input_dim=20), fm.Dense(3, "softmax")], seed=1)
        m.compile(optimizer=fm.optimizers.Adam(lr=1e-2), loss="sparse_categorical_crossentropy", device="cpu")
        h = m.fit(x, y, epochs=3, batch_size=16, verbose=0)
        return m.get_weights(), h.history["loss"]

    (w_flush, loss_flush), (w_ieee, loss_ieee) = train(True), train(False)
    np.testing.assert_allclose(loss_flush, loss_ieee, rtol=1e-6)
    for a, b in zip(w_flush, w_ieee):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_setting_takes_only_a_bool(value):
    before = fm.get_flush_denormals()
    with pytest.raises(TypeError, match="True or False"):
        fm.set_flush_denormals(value)
    assert fm.get_flush_denormals() is before


@needs_x86
def test_default_in_a_fresh_process_is_to_flush():
    out = run_child("""
        import json
        import fastmlp as fm
        print(json.dumps(fm.get_flush_denormals()))
    """)
    assert json.loads(out.strip().splitlines()[-1]) is True


@needs_x86
def test_signal_handlers_during_a_fit_compute_with_the_threads_own_mode():
    # Python runs inside a native call only in signal handlers (the Ctrl-C poll, every 50 ms):
    # they must see the thread's IEEE mode, not fastmlp's flush. Batches of 4 make each fit
    # long enough that most handlers run inside it.
    import signal

    seen = []

    def handler(signum, frame):
        t = np.float32(1e-20)
        seen.append(float(t * t))

    m, x, y = small_classifier()
    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
        fits = 0
        while len(seen) < 10 and fits < 20:  # a slow machine gets more fits
            m.fit(x, y, epochs=1, batch_size=4, verbose=0)
            fits += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
    assert len(seen) >= 10
    assert all(v > 0 for v in seen), seen


class Interrupt(Exception):
    pass


@needs_x86
def test_the_mode_is_restored_when_a_call_raises():
    # A handler raising inside a fit unwinds the native call through its mode guard.
    import signal

    def handler(signum, frame):
        raise Interrupt

    m, x, y = small_classifier()
    previous = signal.signal(signal.SIGALRM, handler)
    interrupted = 0
    try:
        for _ in range(3):
            signal.setitimer(signal.ITIMER_REAL, 0.06)
            try:
                m.fit(x, y, epochs=50, batch_size=4, verbose=0)
            except Interrupt:
                interrupted += 1
            t = np.float32(1e-20)
            assert t * t > 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
    assert interrupted == 3
    with pytest.raises(ValueError):  # a failed call: the same
        m.predict(np.zeros((3, 7), np.float32))
    t = np.float32(1e-20)
    assert t * t > 0


@pytest.mark.skipif(x86, reason="the warning is for CPUs fastmlp cannot flush on")
def test_elsewhere_asking_for_the_flush_warns_and_stays_ieee():
    with pytest.warns(RuntimeWarning, match="only on x86"):
        fm.set_flush_denormals(True)
    assert fm.get_flush_denormals() is False


def small_classifier():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 100)).astype(np.float32)
    y = rng.integers(0, 2, 20000)
    m = fm.Sequential([fm.Dense(256, "relu", input_dim=100), fm.Dense(2, "softmax")], seed=0)
    m.compile("adam", "sparse_categorical_crossentropy", device="cpu")
    return m, x, y
