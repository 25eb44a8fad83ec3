// Error checks for every CUDA runtime and cuBLAS(Lt) call: a failure becomes a C++ exception that
// names the call, the error and file:line (the bindings turn it into a Python exception). Nothing
// here aborts: a library must leave the decision to its caller.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <stdexcept>
#include <string>

#include "fastmlp/backend.h"

namespace fastmlp::cuda {

inline std::string where(const char* file, int line) { return std::string(file) + ":" + std::to_string(line); }

[[noreturn]] inline void throw_cuda(cudaError_t err, const char* call, const char* file, int line) {
  cudaGetLastError();  // clears a non-sticky error so later calls do not report it again
  throw std::runtime_error(std::string(call) + " failed: " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err) +
                           " (" + where(file, line) + ")");
}

inline void check_cuda(cudaError_t err, const char* call, const char* file, int line) {
  if (err != cudaSuccess) throw_cuda(err, call, file, line);
}

inline void check_cublas(cublasStatus_t st, const char* call, const char* file, int line) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string(call) + " failed: " + cublasLtGetStatusString(st) + " (status " +
                             std::to_string(int(st)) + ", " + where(file, line) + ")");
}

// cudaMalloc's result: running out of memory is the caller's problem to handle (smaller batch,
// other device), so it becomes OutOfMemory, with the numbers needed to act on it.
inline void check_malloc(cudaError_t err, size_t bytes, const char* file, int line) {
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear it so the process stays usable
    size_t free_b = 0, total_b = 0;
    const bool known = cudaMemGetInfo(&free_b, &total_b) == cudaSuccess;
    cudaGetLastError();
    int device = -1;
    cudaGetDevice(&device);
    throw OutOfMemory("CUDA out of memory on cuda:" + std::to_string(device) + ": cudaMalloc of " +
                      std::to_string(bytes) + " bytes failed" +
                      (known ? " with " + std::to_string(free_b) + " bytes free of " + std::to_string(total_b)
                             : std::string()) +
                      " (" + where(file, line) + ")");
  }
  check_cuda(err, "cudaMalloc", file, line);
}

}  // namespace fastmlp::cuda

#define FASTMLP_CUDA_CHECK(call) ::fastmlp::cuda::check_cuda((call), #call, __FILE__, __LINE__)
#define FASTMLP_CUBLAS_CHECK(call) ::fastmlp::cuda::check_cublas((call), #call, __FILE__, __LINE__)
// cudaMalloc(ptr, bytes) with out-of-memory turned into fastmlp::OutOfMemory.
#define FASTMLP_CUDA_MALLOC(ptr, bytes) \
  ::fastmlp::cuda::check_malloc(cudaMalloc((ptr), (bytes)), (bytes), __FILE__, __LINE__)
// After a kernel launch: a bad configuration surfaces here, not at the next synchronization.
#define FASTMLP_LAUNCH_CHECK(name) ::fastmlp::cuda::check_cuda(cudaGetLastError(), name, __FILE__, __LINE__)
