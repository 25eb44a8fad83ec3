"""The CPU backend's own worker threads (csrc/cpu/thread_pool.h): no OpenMP runtime in the
process on fastmlp's account, the thread count obeys set_num_threads, and results do not depend
on timing."""
import json

import numpy as np
import pytest

import fastmlp as fm
from child_process import run_child


def test_fastmlp_loads_no_openmp_runtime():
    # An OpenMP runtime loaded first by another library (PyTorch's libgomp) used to run our loops
    # with spinning threads: 14x slower steps. fastmlp must not need one at all.
    out = run_child("""
        import json
        import numpy as np
        import fastmlp as fm
        x = np.random.default_rng(0).normal(size=(4000, 64)).astype(np.float32)
        m = fm.Sequential([fm.Dense(256, "relu", input_dim=64), fm.Dense(2, "softmax")], seed=0)
        m.compile("adam", "sparse_categorical_crossentropy", device="cpu")
        m.fit(x, (x[:, 0] > 0).astype(int), epochs=1, batch_size=512, verbose=0)
        maps = open("/proc/self/maps").read()
        print(json.dumps({"gomp": "libgomp" in maps, "iomp": "libiomp" in maps, "omp": "libomp." in maps}))
    """)
    assert json.loads(out.strip().splitlines()[-1]) == {"gomp": False, "iomp": False, "omp": False}


def test_thread_count_is_ours_to_set_and_results_are_repeatable():
    before = fm.get_num_threads()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 40)).astype(np.float32)
    y = rng.integers(0, 5, 3000)

    def train():
        m = fm.Sequential([fm.Dense(300, "tanh", input_dim=40), fm.BatchNormalization(), fm.Dense(5, "softmax")],
                          seed=3)
        m.compile("adam", "sparse_categorical_crossentropy", device="cpu")
        m.fit(x, y, epochs=2, batch_size=256, verbose=0)
        return m.get_weights()

    try:
        for n in (1, 3):
            fm.set_num_threads(n)
            assert fm.get_num_threads() == n
            first, second = train(), train()
            for a, b in zip(first, second):
                np.testing.assert_array_equal(a, b)  # same thread count: bit-identical
    finally:
        fm.set_num_threads(before)


def test_large_products_split_over_threads_match_the_reference():
    # blas.cpp splits GEMMs above 2 MFLOP into blocks of C over the pool: column blocks when C is
    # wide (forward and dX of the 1003-wide layer, dW1), row blocks when it is tall (the 45-wide
    # layer's forward over 3000 rows, dW2 through a transposed A). Odd widths put the block edges
    # off the 16-column and 8-row grain; 3 threads make uneven parts.
    import reference as ref

    rng = np.random.default_rng(5)
    spec = [(1003, "tanh", 0.0, 0.0, 0.0), (45, "softmax", 0.0, 0.0, 0.0)]
    w = [rng.normal(scale=0.2, size=(67, 1003)), rng.normal(scale=0.2, size=1003),
         rng.normal(scale=0.2, size=(1003, 45)), rng.normal(scale=0.2, size=45)]
    x, y = rng.normal(size=(3000, 67)), rng.integers(0, 45, 3000)
    want_loss, want = ref.gradients(spec, w, x, y.astype(np.float64), "sparse_categorical_crossentropy")
    before = fm.get_num_threads()
    try:
        for n in (1, 2, 3):
            fm.set_num_threads(n)
            m = fm.Sequential([fm.Dense(1003, "tanh", input_dim=67), fm.Dense(45, "softmax")])
            m.compile("sgd", "sparse_categorical_crossentropy", device="cpu", dtype="float64")
            m.set_weights(w)
            np.testing.assert_allclose(m.predict(x), ref.predict(spec, w, x), rtol=1e-12, atol=1e-14)
            for got, expect in zip(m.compute_gradients(x, y), want):
                np.testing.assert_allclose(got, expect, rtol=1e-10, atol=1e-13)
            assert m.evaluate(x, y)["loss"] == pytest.approx(want_loss, rel=1e-12)
    finally:
        fm.set_num_threads(before)


def test_few_row_products_split_by_depth_match_the_reference():
    # Up to 16 rows through a kernel of 2^15 weights or more are split by bands of the kernel's rows
    # (blas.cpp's split by depth), the bands' products added in order; 3 threads make uneven bands.
    # A kernel of 5 rows is split in two bands for 2 threads, and not by depth for 3 (fewer than
    # two rows each). 17 rows are split the usual way.
    import reference as ref

    rng = np.random.default_rng(9)
    for n_in, hidden in ((67, 1003), (5, 7000)):
        spec = [(hidden, "tanh", 0.0, 0.0, 0.0), (4, "softmax", 0.0, 0.0, 0.0)]
        w = [rng.normal(scale=0.2, size=(n_in, hidden)), rng.normal(scale=0.2, size=hidden),
             rng.normal(scale=0.2, size=(hidden, 4)), rng.normal(scale=0.2, size=4)]
        x = rng.normal(size=(17, n_in))
        before = fm.get_num_threads()
        try:
            for n in (1, 2, 3):
                fm.set_num_threads(n)
                m = fm.Sequential([fm.Dense(hidden, "tanh", input_dim=n_in), fm.Dense(4, "softmax")])
                m.compile("sgd", "sparse_categorical_crossentropy", device="cpu", dtype="float64")
                m.set_weights(w)
                for rows in (1, 2, 16, 17):
                    np.testing.assert_allclose(m.predict(x[:rows]), ref.predict(spec, w, x[:rows]),
                                               rtol=1e-12, atol=1e-14)
        finally:
            fm.set_num_threads(before)


def test_one_thread_means_one_busy_thread():
    # set_num_threads governs every pool: the BLAS never threads on its own, so a 1-thread fit of
    # GEMM-heavy layers uses about one core's time (with OpenBLAS threading it would use two).
    out = run_child("""
        import json, resource, time
        import numpy as np
        import fastmlp as fm
        fm.set_num_threads(1)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(4096, 512)).astype(np.float32)
        m = fm.Sequential([fm.Dense(1024, "relu", input_dim=512), fm.Dense(1024, "relu"), fm.Dense(2, "softmax")],
                          seed=0)
        m.compile("adam", "sparse_categorical_crossentropy", device="cpu")
        m.fit(x[:256], (x[:256, 0] > 0).astype(int), epochs=1, batch_size=256, verbose=0)  # warm up
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        m.fit(x, (x[:, 0] > 0).astype(int), epochs=2, batch_size=1024, verbose=0)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        print(json.dumps({"cpu": cpu, "wall": t1 - t0}))
    """)
    r = json.loads(out.strip().splitlines()[-1])
    assert r["cpu"] <= 1.25 * r["wall"] + 0.05, r
