"""Allocation failures leave a usable engine. Each scenario runs in a child process whose address
space is capped (RLIMIT_AS) around the call that must fail, so a crash or a corrupted result shows
as a failed test rather than taking pytest down."""
import pytest

from child_process import run_child

resource = pytest.importorskip("resource")

PRELUDE = """
import resource
import numpy as np
import fastmlp as fm
from fastmlp import callbacks as C

def cap(extra_bytes):
    vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra_bytes, resource.RLIM_INFINITY))

def uncap():
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
"""


def run(script):
    return run_child(script, PRELUDE)


def test_failed_workspace_growth_leaves_the_model_intact():
    out = run("""
        x = np.random.default_rng(0).normal(size=(200_000, 6)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int64)
        m = fm.Sequential([fm.Dense(256, "relu", input_dim=6), fm.Dense(2, "softmax")], seed=0)
        m.compile("adam", "sparse_categorical_crossentropy", device="cpu")
        m.fit(x[:100], y[:100], batch_size=10, verbose=0)
        before = m.predict(x[:5])
        cap(300 << 20)
        try:
            m.evaluate(x, y, batch_size=200_000)   # a 200 MB workspace does not fit
            print("no error")
        except MemoryError as e:
            print("MemoryError", "out of host memory" in str(e))
        uncap()
        print("same", np.array_equal(before, m.predict(x[:5])))
        m.fit(x[:100], y[:100], batch_size=10, verbose=0)
        print("trains", np.isfinite(m.evaluate(x[:100], y[:100])["loss"]))
    """)
    assert out.split() == ["MemoryError", "True", "same", "True", "trains", "True"]


def test_failed_chunk_buffers_mid_epoch_do_not_disturb_streamed_training():
    out = run("""
        rng = np.random.default_rng(1)
        x = rng.normal(size=(203, 6)).astype(np.float32)
        y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
        xv = rng.normal(size=(4_000_000, 6)).astype(np.float32)
        yv = (xv[:, 0] > 0).astype(np.int64)
        budget = 30 * 4 * 7
        spray = []

        class Probe(C.Callback):
            batch_interval = 5

            def __init__(self, val):
                super().__init__()
                self.val = val

            def on_train_batch_end(self, batch, logs=None):
                if batch != 4:
                    return
                self.model.data_budget = None     # evaluate in big chunks: their buffers do not fit
                cap(40 << 20)
                try:
                    self.model.evaluate(self.val)
                    print("no error")
                except MemoryError:
                    print("MemoryError")
                uncap()
                self.model.data_budget = budget
                spray.extend(np.full(28 * 6, 1e30, np.float32) for _ in range(2000))  # reuse freed memory

        def train(probe):
            m = fm.Sequential([fm.Dense(16, "tanh", input_dim=6), fm.Dense(3, "softmax")], seed=3)
            m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu")
            m.data_budget = budget
            cbs = [Probe(m.upload(xv, yv))] if probe else []
            h = m.fit(m.upload(x, y), batch_size=7, epochs=1, shuffle=False, verbose=0, callbacks=cbs)
            return m, h

        (a, ha), (b, hb) = train(False), train(True)
        print("history", ha.history == hb.history)
        print("weights", all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights())))
    """)
    assert out.split() == ["MemoryError", "history", "True", "weights", "True"]


def test_failed_evaluate_in_a_batch_hook_leaves_the_epoch_running():
    # The hook's evaluate drops the workspace and fails to grow it; training must rebuild it.
    out = run("""
        rng = np.random.default_rng(0)
        x = rng.normal(size=(200, 6)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int64)
        xv = rng.normal(size=(200_000, 6)).astype(np.float32)
        yv = (xv[:, 0] > 0).astype(np.int64)

        class Probe(C.Callback):
            batch_interval = 5

            def on_train_batch_end(self, batch, logs=None):
                if batch != 4:
                    return
                cap(100 << 20)
                try:
                    self.model.evaluate(xv, yv, batch_size=200_000)
                    print("no error")
                except MemoryError:
                    print("MemoryError")
                uncap()

        def train(probe):
            m = fm.Sequential([fm.Dense(256, "relu", input_dim=6), fm.Dense(2, "softmax")], seed=0)
            m.compile("adam", "sparse_categorical_crossentropy", device="cpu")
            h = m.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[Probe()] if probe else [])
            return m, h

        (a, ha), (b, hb) = train(False), train(True)
        print("history", ha.history == hb.history)
        print("weights", all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights())))
    """)
    assert out.split() == ["MemoryError", "history", "True", "weights", "True"]


def test_a_failed_optimizer_switch_keeps_the_old_optimizer_whole():
    out = run("""
        from fastmlp import _core
        def engine():
            e = _core.Engine32(4000, [(4000, 0, 0.0, 0.0, 0.0), (2, 0, 0.0, 0.0, 0.0)], 3, 0, "cpu", "float32")  # 16M params
            e.initialize([("glorot_uniform", 0.0, 0.0)] * 2, 7)
            e.set_optimizer(sgd)
            return e
        sgd = _core.OptimizerConfig(); sgd.kind = 0; sgd.lr = 0.01
        e = engine()
        adam = _core.OptimizerConfig(); adam.kind = 4
        cap(40 << 20)   # Adam's 128 MB of state do not fit
        try:
            e.set_optimizer(adam)
            print("no error")
        except MemoryError:
            print("MemoryError")
        uncap()
        x = np.random.default_rng(0).normal(size=(8, 4000)).astype(np.float32)
        y = np.zeros((8, 2), np.float32)
        e.train_epoch(e.upload(x, y), None, 4)
        plain = engine()  # never offered Adam: the failed switch must have changed nothing
        plain.train_epoch(plain.upload(x, y), None, 4)
        print("slots", e.state_slots, "same", np.array_equal(e.get_params(), plain.get_params()))
        del plain
    """)
    assert out.split() == ["MemoryError", "slots", "0", "same", "True"]
