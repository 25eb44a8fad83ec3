// The C entry points of the CUDA plugin (libfastmlp_cuda.so), opened with dlopen by the core.
#pragma once
#include <cstddef>

#include "fastmlp/backend.h"

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
}
