"""Arrays that already live on the GPU are used in place by the CUDA backend, without a host round
trip: anything exposing ``__cuda_array_interface__`` (PyTorch, CuPy, Numba) or DLPack
(``__dlpack__`` with ``__dlpack_device__`` naming a CUDA device: PyTorch, CuPy, JAX, ...).

Features must be float32, 2-D and C-contiguous there (convert on the device first, e.g.
``x.float().contiguous()`` in PyTorch). They are not scanned for NaN/Inf (that would cost a
pass over the data); a NaN still stops training with fm.NonFiniteLossError. Targets are small
and are copied to the host once so labels can be checked like NumPy targets. Host objects with
DLPack (a CPU tensor) go through NumPy like any other host array.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

_TYPESTRS = {"<f4": np.float32, "<f8": np.float64, "<i8": np.int64, "<i4": np.int32, "|u1": np.uint8,
             "<u1": np.uint8, "|i1": np.int8, "<f2": np.float16, "|b1": np.bool_}

# DLPack device types that are GPU memory the CUDA backend can read (kDLCUDA, kDLCUDAManaged).
_DL_CUDA_DEVICES = (2, 13)
# DLPack (type code, bits) -> NumPy dtype: kDLInt 0, kDLUInt 1, kDLFloat 2, kDLBool 6.
_DL_DTYPES = {(0, 8): np.int8, (0, 16): np.int16, (0, 32): np.int32, (0, 64): np.int64, (1, 8): np.uint8,
              (1, 16): np.uint16, (1, 32): np.uint32, (1, 64): np.uint64, (2, 16): np.float16,
              (2, 32): np.float32, (2, 64): np.float64, (6, 8): np.bool_}


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):  # the legacy (unversioned) capsule "dltensor"
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


@dataclass
class DeviceArray:
    """A GPU array as the backend sees it: address, shape, byte strides (None: C-contiguous) and
    dtype (None when not one NumPy knows). `keep` holds what keeps the memory valid."""

    ptr: int
    shape: tuple
    strides: tuple | None
    dtype: np.dtype | None
    dtype_name: str
    keep: object = None


def _from_cuda_array_interface(cai) -> DeviceArray:
    typestr = cai["typestr"]
    dtype = np.dtype(_TYPESTRS[typestr]) if typestr in _TYPESTRS else None
    strides = cai.get("strides")
    return DeviceArray(int(cai["data"][0]), tuple(cai["shape"]), None if strides is None else tuple(strides), dtype,
                       typestr)


def _from_dlpack(obj) -> DeviceArray:
    try:
        capsule = obj.__dlpack__(stream=None)
    except TypeError:  # producers older than the stream keyword
        capsule = obj.__dlpack__()
    # The capsule stays unconsumed: when it is collected its producer frees what it holds; the
    # memory itself belongs to obj, which the caller holds while the data is in use.
    try:
        managed = _DLManagedTensor.from_address(_capsule_pointer(capsule, b"dltensor"))
    except ValueError:  # a capsule of another name (e.g. an already consumed one)
        raise TypeError(f"{type(obj).__name__}.__dlpack__() did not return a DLPack 'dltensor' capsule") from None
    t = managed.dl_tensor
    shape = tuple(t.shape[i] for i in range(t.ndim))
    code, bits, lanes = t.dtype.code, t.dtype.bits, t.dtype.lanes
    dtype = np.dtype(_DL_DTYPES[(code, bits)]) if lanes == 1 and (code, bits) in _DL_DTYPES else None
    name = dtype.name if dtype is not None else f"DLPack type code {code}, {bits} bits x {lanes}"
    strides = None
    if t.strides and dtype is not None:
        strides = tuple(t.strides[i] * dtype.itemsize for i in range(t.ndim))
    return DeviceArray(int(t.data or 0) + int(t.byte_offset), shape, strides, dtype, name, keep=capsule)


def device_array(obj) -> DeviceArray | None:
    """The GPU array behind obj, or None for host data (NumPy, lists, CPU tensors)."""
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is not None:
        return _from_cuda_array_interface(cai)
    dl_device = getattr(obj, "__dlpack_device__", None)
    if dl_device is not None and hasattr(obj, "__dlpack__"):
        if int(dl_device()[0]) in _DL_CUDA_DEVICES:
            return _from_dlpack(obj)
    return None


def cuda_array(obj) -> bool:
    """True when obj is an array in GPU memory (either protocol)."""
    return device_array(obj) is not None


def _contiguous(shape, strides, itemsize) -> bool:
    if strides is None:
        return True
    expected, acc = [], itemsize
    for dim in reversed(shape):
        expected.append(acc)
        acc *= dim
    # A dimension of extent 1 may carry any stride.
    return all(s == e or d == 1 for s, e, d in zip(strides, reversed(expected), shape))


def device_features(arr: DeviceArray, name: str, input_dim: int | None):
    """(pointer, rows, cols) of a float32 C-contiguous device matrix; TypeError/ValueError otherwise."""
    shape = arr.shape
    if arr.dtype != np.float32:
        raise TypeError(f"{name} on the GPU must be float32 (got {arr.dtype_name}); convert it on the device first")
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} is empty, shape {shape}")
    if input_dim is not None and shape[1] != input_dim:
        raise ValueError(f"{name} has {shape[1]} features but the model expects {input_dim}")
    if not _contiguous(shape, arr.strides, 4):
        raise TypeError(f"{name} on the GPU must be C-contiguous (e.g. x.contiguous())")
    return arr.ptr, shape[0], shape[1]


def device_to_host(arr: DeviceArray, engine, name: str) -> np.ndarray:
    """Copies a (small) device array to a NumPy array through the engine's backend."""
    if arr.dtype is None:
        raise TypeError(f"{name} on the GPU has unsupported dtype {arr.dtype_name}")
    if not _contiguous(arr.shape, arr.strides, arr.dtype.itemsize):
        raise TypeError(f"{name} on the GPU must be contiguous")
    nbytes = int(np.prod(arr.shape)) * arr.dtype.itemsize
    raw = engine.read_device_memory(arr.ptr, nbytes)
    return np.frombuffer(raw, dtype=arr.dtype).reshape(arr.shape)
