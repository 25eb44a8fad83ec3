// Error checks for every CUDA runtime and cuBLAS(Lt) call: failures become C++ exceptions that
// name the call (the bindings turn them into Python exceptions); nothing aborts the process.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "fastmlp/backend.h"

namespace fastmlp::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t err, const char* call, const char* file, int line) {
  cudaGetLastError();  // clear a sticky-free error so the process stays usable
  throw std::runtime_error(std::string(call) + " failed: " + cudaGetErrorString(err) + " (" + file + ":" +
                           std::to_string(line) + ")");
}

inline void check_cuda(cudaError_t err, const char* call, const char* file, int line) {
  if (err != cudaSuccess) throw_cuda(err, call, file, line);
}

inline void check_cublas(cublasStatus_t st, const char* call, const char* file, int line) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string(call) + " failed: cuBLAS status " + std::to_string(int(st)) + " (" + file +
                             ":" + std::to_string(line) + ")");
}

}  // namespace fastmlp::cuda

#define FASTMLP_CUDA_CHECK(call) ::fastmlp::cuda::check_cuda((call), #call, __FILE__, __LINE__)
#define FASTMLP_CUBLAS_CHECK(call) ::fastmlp::cuda::check_cublas((call), #call, __FILE__, __LINE__)
// After a kernel launch: configuration errors surface here, not at the next sync.
#define FASTMLP_LAUNCH_CHECK(name) ::fastmlp::cuda::check_cuda(cudaGetLastError(), name, __FILE__, __LINE__)
