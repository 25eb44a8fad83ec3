// Registers fastmlp._core.BackendOps32 / BackendOps64 (backend_ops.cpp): per-operation access to
// a backend for tests.
#pragma once
#include <pybind11/pybind11.h>

namespace fastmlp {
void bind_backend_ops(pybind11::module_& m);
}
