"""GPU-array interop without a GPU: the DLPack reader is checked on NumPy's own DLPack capsules,
presented by a wrapper as if they lived on a CUDA device, so pointer, shape, strides and dtype
parsing are verified byte for byte; host objects that offer only DLPack go through NumPy.
(The real GPU path is in test_cuda_workflow.py.)"""
import ctypes

import numpy as np
import pytest

import fastmlp as fm
from fastmlp._interop import cuda_array, device_array, device_features, device_to_host


class FakeCudaDLPack:
    """A NumPy array presented as CUDA memory: __dlpack_device__ says kDLCUDA, the capsule is NumPy's."""

    def __init__(self, arr):
        self.arr = arr

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None):
        return self.arr.__dlpack__()


class HostDLPackOnly:
    """A host array offering DLPack and nothing else (no __array__)."""

    def __init__(self, arr):
        self.arr = arr

    def __dlpack_device__(self):
        return self.arr.__dlpack_device__()

    def __dlpack__(self, stream=None, **kw):
        return self.arr.__dlpack__(**kw)


class HostMemoryEngine:
    """Stands in for a CUDA engine: 'device memory' here is host memory."""

    @staticmethod
    def read_device_memory(ptr, nbytes):
        return ctypes.string_at(ptr, nbytes)


def test_dlpack_features_give_pointer_shape_and_dtype():
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    wrapped = FakeCudaDLPack(x)
    assert cuda_array(wrapped) and not cuda_array(x) and not cuda_array(HostDLPackOnly(x))
    assert device_features(device_array(wrapped), "x", 4) == (x.ctypes.data, 6, 4)
    rows = x[2:]  # a view starting inside the buffer
    assert device_features(device_array(FakeCudaDLPack(rows)), "x", None) == (rows.ctypes.data, 4, 4)
    arr = device_array(wrapped)
    assert arr.dtype == np.float32 and arr.shape == (6, 4)


@pytest.mark.parametrize("arr, exc, word", [
    (np.zeros((6, 4), np.float64), TypeError, "float32 \\(got float64\\)"),
    (np.zeros(6, np.float32), ValueError, "2-D"),
    (np.zeros((6, 8), np.float32)[:, ::2], TypeError, "C-contiguous"),
    (np.zeros((4, 6), np.float32).T, TypeError, "C-contiguous"),
    (np.zeros((0, 4), np.float32), ValueError, "empty"),
    (np.zeros((6, 5), np.float32), ValueError, "5 features but the model expects 4"),
])
def test_dlpack_features_reject_what_the_backend_cannot_use(arr, exc, word):
    with pytest.raises(exc, match=word):
        device_features(device_array(FakeCudaDLPack(arr)), "x", 4)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.float32, np.float64, np.bool_])
def test_dlpack_targets_are_copied_to_the_host_exactly(dtype):
    y = (np.arange(10) % 3).astype(dtype)
    got = device_to_host(device_array(FakeCudaDLPack(y)), HostMemoryEngine(), "y")
    assert got.dtype == y.dtype
    np.testing.assert_array_equal(got, y)
    col = y.reshape(10, 1)
    np.testing.assert_array_equal(device_to_host(device_array(FakeCudaDLPack(col)), HostMemoryEngine(), "y"), col)


def test_non_contiguous_dlpack_targets_and_odd_capsules_are_refused():
    with pytest.raises(TypeError, match="contiguous"):
        device_to_host(device_array(FakeCudaDLPack(np.zeros((4, 6))[:, ::2])), HostMemoryEngine(), "y")

    class Consumed(FakeCudaDLPack):
        def __dlpack__(self, stream=None):
            cap = self.arr.__dlpack__()
            ctypes.pythonapi.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
            ctypes.pythonapi.PyCapsule_SetName(cap, b"used_dltensor")
            return cap

    with pytest.raises(TypeError, match="dltensor"):
        device_array(Consumed(np.zeros((2, 4), np.float32)))


def test_a_cpu_model_given_a_gpu_array_says_so_and_stays_unbuilt():
    m = fm.Sequential([fm.Dense(3, activation="relu"), fm.Dense(2, activation="softmax")], seed=0)
    m.compile("adam", "sparse_categorical_crossentropy", device="cpu")
    with pytest.raises(TypeError, match="lives on the GPU but the model runs on cpu"):
        m.fit(FakeCudaDLPack(np.zeros((4, 4), np.float32)), np.zeros(4, np.int64), verbose=0)
    assert not m.built


def test_host_objects_with_only_dlpack_train_like_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    models = []
    for xs, ys in ((x, y), (HostDLPackOnly(x), HostDLPackOnly(y))):
        m = fm.Sequential([fm.Dense(8, activation="relu", input_dim=4), fm.Dense(2, activation="softmax")], seed=0)
        m.compile("adam", "sparse_categorical_crossentropy", device="cpu")
        models.append((m, m.fit(xs, ys, epochs=2, batch_size=8, verbose=0)))
    (a, ha), (b, hb) = models
    assert ha.history == hb.history
    np.testing.assert_array_equal(a.predict(x), b.predict(HostDLPackOnly(x)))
