// The plugin's C entry points (see fastmlp/cuda_plugin.h). They never throw and never abort:
// on a machine without a driver they report why CUDA is unusable.
#include <cuda_runtime.h>
#include <cublasLt.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "cuda_backend.h"
#include "fastmlp/cuda_plugin.h"
#include "nccl_communicator.h"
#include "nccl_library.h"

#ifndef FASTMLP_CUDA_BUILD
#define FASTMLP_CUDA_BUILD "CUDA (unknown build)"
#endif

namespace {

void copy_out(const std::string& s, char* dst, size_t len) {
  if (!dst || len == 0) return;
  std::snprintf(dst, len, "%s", s.c_str());
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int fastmlp_cuda_query(char* description, size_t description_len,
                                                                        char* build, size_t build_len, char* reason,
                                                                        size_t reason_len) {
  try {
    copy_out(FASTMLP_CUDA_BUILD, build, build_len);
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
      cudaGetLastError();
      copy_out(std::string("no usable CUDA device: ") + cudaGetErrorString(err), reason, reason_len);
      return 0;
    }
    if (count == 0) {
      copy_out("no CUDA device found", reason, reason_len);
      return 0;
    }
    int driver = 0, runtime = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    std::string desc;
    for (int i = 0; i < count; ++i) {
      cudaDeviceProp prop{};
      if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
        cudaGetLastError();
        continue;
      }
      desc += "cuda:" + std::to_string(i) + " " + prop.name + " (compute capability " + std::to_string(prop.major) +
              "." + std::to_string(prop.minor) + ", " + std::to_string(prop.multiProcessorCount) + " SMs, " +
              std::to_string(prop.totalGlobalMem >> 20) + " MiB); ";
    }
    // Versions are encoded as 1000 * major + 10 * minor.
    auto version = [](int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); };
    desc += "driver CUDA " + version(driver) + ", runtime " + version(runtime) + ", cuBLASLt " +
            std::to_string(cublasLtGetVersion());
    copy_out(desc, description, description_len);
    return count;
  } catch (const std::exception& e) {
    copy_out(e.what(), reason, reason_len);
    return 0;
  } catch (...) {
    copy_out("unknown error while querying CUDA devices", reason, reason_len);
    return 0;
  }
}

extern "C" __attribute__((visibility("default"))) const char* fastmlp_cuda_abi() { return FASTMLP_BACKEND_ABI; }

extern "C" __attribute__((visibility("default"))) fastmlp::Backend<float>* fastmlp_cuda_create(int index,
                                                                                              const char* precision,
                                                                                              char* error,
                                                                                              size_t error_len) {
  try {
    const std::string prec = precision ? precision : "float32";
    if (prec != "float32" && prec != "tf32" && prec != "bf16") {
      copy_out("unknown CUDA precision '" + prec + "': choose float32, tf32 or bf16", error, error_len);
      return nullptr;
    }
    const cudaError_t err = cudaSetDevice(index);
    if (err != cudaSuccess) {
      cudaGetLastError();
      int count = 0;
      if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
      cudaGetLastError();
      copy_out("cannot use cuda:" + std::to_string(index) + " (" + std::to_string(count) +
                   " device(s) visible): " + cudaGetErrorString(err),
               error, error_len);
      return nullptr;
    }
    return new fastmlp::cuda::CudaBackend(index, prec);
  } catch (const std::exception& e) {
    copy_out(e.what(), error, error_len);
  } catch (...) {
    copy_out("unknown error creating the CUDA backend", error, error_len);
  }
  return nullptr;
}

extern "C" __attribute__((visibility("default"))) int fastmlp_cuda_nccl_version(const char* library, char* path,
                                                                               size_t path_len, char* error,
                                                                               size_t error_len) {
  try {
    const fastmlp::cuda::nccl::Library& lib = fastmlp::cuda::nccl::library(library ? library : "");
    copy_out(lib.path, path, path_len);
    return lib.version;
  } catch (const std::exception& e) {
    copy_out(e.what(), error, error_len);
  } catch (...) {
    copy_out("unknown error loading NCCL", error, error_len);
  }
  return 0;
}

extern "C" __attribute__((visibility("default"))) int fastmlp_cuda_nccl_unique_id(const char* library, char* id,
                                                                                 char* error, size_t error_len) {
  try {
    const fastmlp::cuda::nccl::Library& lib = fastmlp::cuda::nccl::library(library ? library : "");
    fastmlp::cuda::nccl::UniqueId unique{};
    const fastmlp::cuda::nccl::Result r = lib.get_unique_id(&unique);
    if (r != fastmlp::cuda::nccl::kSuccess) {
      copy_out("ncclGetUniqueId failed: " + lib.describe(r), error, error_len);
      return 0;
    }
    std::memcpy(id, unique.internal, sizeof unique.internal);
    return 1;
  } catch (const std::exception& e) {
    copy_out(e.what(), error, error_len);
  } catch (...) {
    copy_out("unknown error in ncclGetUniqueId", error, error_len);
  }
  return 0;
}

extern "C" __attribute__((visibility("default"))) fastmlp::Communicator* fastmlp_cuda_nccl_communicator(
    const char* library, const char* id, int rank, int size, int device, double timeout_seconds, char* error,
    size_t error_len) {
  try {
    const fastmlp::cuda::nccl::Library& lib = fastmlp::cuda::nccl::library(library ? library : "");
    fastmlp::cuda::nccl::UniqueId unique{};
    std::memcpy(unique.internal, id, sizeof unique.internal);
    return fastmlp::cuda::make_nccl_communicator(lib, unique, rank, size, device, timeout_seconds).release();
  } catch (const std::exception& e) {
    copy_out(e.what(), error, error_len);
  } catch (...) {
    copy_out("unknown error creating the NCCL communicator", error, error_len);
  }
  return nullptr;
}
