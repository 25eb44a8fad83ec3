"""fastmlp: multilayer perceptrons trained by a native C++/CUDA engine behind a Keras-style API.

    import fastmlp as fm
    model = fm.Sequential([fm.Dense(256, activation="relu", input_dim=784),
                           fm.Dense(10, activation="softmax")], seed=0)
    model.compile(optimizer=fm.optimizers.Adam(lr=1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, epochs=5, batch_size=128)
"""
from __future__ import annotations

# The native core uses no OpenMP runtime (its element-wise loops have their own sleeping worker
# threads, csrc/cpu/thread_pool.h), so importing fastmlp changes no OpenMP setting of the process.
from . import _core  # noqa: E402
from . import activations, callbacks  # noqa: E402, initializers, losses, optimizers, regularizers, schedules
from ._cmake_paths import get_cmake_dir, get_include  # noqa: E402 (the C++ core's CMake package)
from .curvature import hessian, hvp
from .gradcheck import gradcheck
from .layers import Activation, BatchNormalization, Dense, Dropout, LayerNormalization
from .models import NonFiniteLossError, Sequential, cuda_is_available

__version__ = "0.1.0"


def set_num_threads(n: int) -> None:
    """Threads used by the CPU backend: one pool runs its element-wise loops and, with the
    bundled OpenBLAS (which stays single-threaded), its GEMMs; a system BLAS gets n threads."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be a positive integer, got {n!r}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    return _core.get_num_threads()


def set_flush_denormals(enabled: bool) -> None:
    """Whether the CPU backend computes with subnormal floats flushed to zero (the default).

    Subnormals (below 1.2e-38 in float32, 2.2e-308 in float64) take a slow path on x86 CPUs, and
    training makes them: Adam's first moment of a weight whose gradient turns exactly zero (a unit
    that died, a pixel that is rarely lit) decays into that range. With flushing they read and compute as
    zero; nothing else changes. TensorFlow's CPU kernels do the same; PyTorch's do not unless
    ``torch.set_flush_denormal(True)``. The setting applies to fastmlp's own calls only: the
    calling thread's mode is restored when each call returns, so NumPy and other libraries keep
    IEEE subnormals. With ``False``, fastmlp leaves the mode to the thread that calls it. fastmlp
    flushes only on x86 CPUs; elsewhere ``True`` warns and the mode stays IEEE.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"set_flush_denormals expects True or False, got {enabled!r}")
    if enabled and not _core.flush_denormals_supported():
        import warnings

        warnings.warn("fastmlp flushes subnormal floats to zero only on x86 CPUs; they stay IEEE subnormals here",
                      RuntimeWarning, stacklevel=2)
    _core.set_flush_denormals(enabled)


def get_flush_denormals() -> bool:
    """Whether fastmlp's CPU calls flush subnormal floats to zero (see set_flush_denormals)."""
    return _core.get_flush_denormals()


def build_info() -> dict:
    """What this build of fastmlp contains: BLAS, CUDA version and GPU architectures, GPUs seen."""
    from . import _build_config as cfg

    cuda = _core.cuda_info()
    return {
        "version": __version__,
        "blas": _core.blas_info(),
        "cuda_compiled": cfg.CUDA_COMPILED,
        "cuda_version": cfg.CUDA_VERSION if cfg.CUDA_COMPILED else None,
        "cuda_archs": cfg.CUDA_ARCHS if cfg.CUDA_COMPILED else None,
        "cuda_available": cuda["available"],
        "cuda_devices": cuda["description"],
        "cuda_reason": cuda["reason"],
        "cuda_plugin_build": cuda["build"],
        "build_type": cfg.BUILD_TYPE,
    }


def __getattr__(name):
    # Optional parts load on first use so `import fastmlp` never imports matplotlib or scikit-learn.
    import importlib

    if name in ("plot", "datasets", "model_selection", "saving", "export", "distributed"):
        return importlib.import_module(f".{name}", __name__)
    if name in ("MLPClassifier", "MLPRegressor"):
        return getattr(importlib.import_module(".sklearn", __name__), name)
    if name == "load_model":
        return importlib.import_module(".saving", __name__).load_model
    if name == "from_torch":  # fastmlp.export imports torch only when called
        return importlib.import_module(".export", __name__).from_torch
    raise AttributeError(f"module 'fastmlp' has no attribute {name!r}")


__all__ = ["Sequential", "Dense", "Dropout", "BatchNormalization", "LayerNormalization", "Activation", "NonFiniteLossError", "gradcheck", "hvp", "hessian", "set_num_threads", "get_num_threads",
           "set_flush_denormals", "get_flush_denormals",
           "build_info", "cuda_is_available", "activations", "callbacks", "initializers", "losses",
           "optimizers", "regularizers", "schedules", "from_torch", "get_cmake_dir", "get_include"]
