// The C entry points of the CUDA plugin (libfastmlp_cuda.so), opened with dlopen by the core.
#pragma once
#include <cstddef>

#include <string>

#include "fastmlp/backend.h"
#include "fastmlp/communicator.h"

extern "C" {
// The fingerprint of the Backend interface the plugin was compiled against (FASTMLP_BACKEND_ABI,
// CMakeLists.txt); the core loads only a plugin whose fingerprint is its own.
typedef const char* (*CudaPluginAbiFn)();
// Returns the number of usable GPUs (0 or -1 when none) and describes them, the build, and
// when none is usable, why.
typedef int (*CudaPluginQueryFn)(char* description, size_t description_len, char* build, size_t build_len,
                                 char* reason, size_t reason_len);
// Creates a float32 backend on device `index`; returns null and fills `error` on failure.
typedef fastmlp::Backend<float>* (*CudaPluginCreateFn)(int index, const char* precision, char* error,
                                                      size_t error_len);

// NCCL for data-parallel GPU ranks (cuda/nccl_library.h): `library` is the libnccl.so.2 to open
// (empty: the loader's search). Each returns 0 (or null) and fills `error` on failure.
// The version code of the NCCL opened (22809 for 2.28.9) and, in path, which file that was.
typedef int (*CudaPluginNcclVersionFn)(const char* library, char* path, size_t path_len, char* error,
                                       size_t error_len);
// A new communicator id (ncclGetUniqueId, 128 bytes into id): rank 0 makes it, every rank joins it.
typedef int (*CudaPluginNcclUniqueIdFn)(const char* library, char* id, char* error, size_t error_len);
// Joins the communicator `id` of `size` ranks as `rank` on GPU `device` (collective).
typedef fastmlp::Communicator* (*CudaPluginNcclCommunicatorFn)(const char* library, const char* id, int rank,
                                                               int size, int device, double timeout_seconds,
                                                               char* error, size_t error_len);
}

namespace fastmlp {
// A symbol of the CUDA plugin (opened on first use), or null with the reason in `error`.
void* cuda_plugin_symbol(const char* name, std::string* error);
}  // namespace fastmlp
