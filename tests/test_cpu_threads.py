"""The CPU backend's own worker threads (csrc/cpu/thread_pool.h): no OpenMP runtime in the
process on fastmlp's account, the thread count obeys set_num_threads, and results do not depend
on timing."""
import json

import numpy as np

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
