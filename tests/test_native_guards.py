"""The native boundary checks what it is given, whoever calls it (issue 9, items 5 and 7): buffer
shapes, integer ranges and optimizer settings raise ValueError naming the problem, never read
outside a buffer, never show pybind11 internals, never change the engine."""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import _core


def engine():
    m = fm.Sequential([fm.Dense(4, "tanh", input_dim=6), fm.Dense(3, "softmax")], seed=0)
    m.compile("adam", "sparse_categorical_crossentropy", device="cpu")
    return m._engine


@pytest.mark.parametrize("x, y, match", [
    (np.zeros((10, 3), np.float32), None, "6 columns"),            # fewer columns than the model reads
    (np.zeros(60, np.float32), None, "2-D"),                        # flat buffer of the right size
    (np.zeros((10, 6), np.float32), np.zeros(9, np.float32), "10 rows of 1"),
    (np.zeros((10, 6), np.float32), np.zeros((10, 3), np.float32), "10 rows of 1"),
])
def test_upload_checks_buffer_shapes(x, y, match):
    e = engine()
    with pytest.raises(ValueError, match=match):
        e.upload(x, y)


@pytest.mark.parametrize("call, match", [
    (lambda e, d: e.evaluate(d, 2 ** 31), "batch_size must be in"),
    (lambda e, d: e.predict(d, 0), "batch_size must be in"),
    (lambda e, d: e.train_epoch(d, 2 ** 64, 8), "shuffle seed must be in"),
    (lambda e, d: e.train_epoch(d, None, 10 ** 30), "batch_size must be in"),
    (lambda e, d: e.train_batches(d, -1), "max_batches must be in"),
    (lambda e, d: setattr(e, "step", 2 ** 63), "step must be in"),
    (lambda e, d: setattr(e, "step", -1), "step must be in"),
    (lambda e, d: e.initialize([("zeros", 0, 0)] * 2, 2 ** 64), "seed must be in"),
])
def test_integers_out_of_range_are_value_errors(call, match):
    e = engine()
    d = e.upload(np.zeros((10, 6), np.float32), np.zeros((10, 1), np.float32))
    before = e.get_params().copy(), e.step
    with pytest.raises(ValueError, match=match):
        call(e, d)
    np.testing.assert_array_equal(e.get_params(), before[0])
    assert e.step == before[1]


@pytest.mark.parametrize("units", [2 ** 31, -1, 0])
def test_layer_sizes_out_of_range_at_the_native_boundary(units):
    with pytest.raises(ValueError, match="units must be in"):
        _core.Engine32(6, [(units, 0, 0.0, 0.0, 0.0)], 3, 0, "cpu", "float32")


@pytest.mark.parametrize("field, value, match", [
    ("lr", -0.1, "lr must be"),
    ("lr", float("nan"), "lr must be"),
    ("beta2", 1.0, "betas"),
    ("eps", float("inf"), "eps"),
    ("alpha", 1.5, "alpha"),
])
def test_optimizer_settings_are_checked_natively(field, value, match):
    e = engine()
    c = _core.OptimizerConfig()
    c.kind = 4  # Adam
    setattr(c, field, value)
    state = e.get_state().copy()
    with pytest.raises(ValueError, match=match):
        e.set_optimizer(c, True)
    np.testing.assert_array_equal(e.get_state(), state)


def test_schedule_settings_are_checked_natively():
    e = engine()
    c = _core.OptimizerConfig()
    s = _core.Schedule()
    s.kind = 4  # cosine
    s.min_lr = -0.1  # trained the loss from 2.37 to 550 when it came from a model file
    c.schedule = s
    with pytest.raises(ValueError, match="min_lr"):
        e.set_optimizer(c, True)
    with pytest.raises(ValueError, match="lr must be"):
        e.set_learning_rate(float("inf"))


@pytest.mark.parametrize("what", ["optimizer", "schedule"])
def test_unknown_kinds_are_rejected(what):
    obj = _core.OptimizerConfig() if what == "optimizer" else _core.Schedule()
    with pytest.raises(ValueError, match="kind must be in"):
        obj.kind = 99


def test_learning_rate_zero_is_accepted_natively():
    e = engine()
    e.set_learning_rate(0.0)  # warm-up schedules start there (PyTorch and Keras accept it)


def test_set_state_checks_its_length():
    e = engine()
    with pytest.raises(ValueError, match="optimizer state has 3 values"):
        e.set_state(np.zeros(3, np.float32))
