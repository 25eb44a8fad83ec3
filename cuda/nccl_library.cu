// Opening NCCL at run time (nccl_library.h).
#include "nccl_library.h"

#include <dlfcn.h>

#include <mutex>

#include "fastmlp/communicator.h"

#if __has_include(<nccl.h>)
#include <nccl.h>
// The declarations in nccl_library.h must be NCCL's own.
static_assert(sizeof(ncclUniqueId) == sizeof(fastmlp::cuda::nccl::UniqueId), "ncclUniqueId");
static_assert(sizeof(ncclComm_t) == sizeof(fastmlp::cuda::nccl::Comm), "ncclComm_t");
static_assert(sizeof(ncclDataType_t) == sizeof(int) && sizeof(ncclRedOp_t) == sizeof(int) &&
                  sizeof(ncclResult_t) == sizeof(int),
              "NCCL's enums are ints");
static_assert(int(ncclSuccess) == fastmlp::cuda::nccl::kSuccess && int(ncclInProgress) == fastmlp::cuda::nccl::kInProgress,
              "ncclResult_t");
static_assert(int(ncclInt32) == fastmlp::cuda::nccl::kInt32 && int(ncclFloat32) == fastmlp::cuda::nccl::kFloat32 &&
                  int(ncclFloat64) == fastmlp::cuda::nccl::kFloat64,
              "ncclDataType_t");
static_assert(int(ncclSum) == fastmlp::cuda::nccl::kSum && int(ncclMax) == fastmlp::cuda::nccl::kMax, "ncclRedOp_t");
#endif

namespace fastmlp::cuda::nccl {

std::string Library::describe(Result r, Comm comm) const {
  std::string text = "NCCL error " + std::to_string(r);
  if (get_error_string) text += std::string(" (") + get_error_string(r) + ")";
  if (comm && get_last_error) {
    const char* last = get_last_error(comm);
    if (last && *last) text += std::string(": ") + last;
  }
  return text;
}

namespace {

template <typename F>
void find(void* handle, const char* name, F& fn, const std::string& path, bool required = true) {
  fn = reinterpret_cast<F>(dlsym(handle, name));
  if (!fn && required) throw DistributedError("NCCL library " + path + " lacks " + name);
}

Library open_library(const std::string& requested) {
  Library lib;
  lib.path = requested.empty() ? "libnccl.so.2" : requested;
  // RTLD_GLOBAL is not needed: fastmlp calls NCCL only through these pointers.
  void* handle = dlopen(lib.path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* e = dlerror();
    throw DistributedError("NCCL could not be loaded (" + std::string(e ? e : lib.path) +
                           "): pip install 'fastmlp[nccl]' (the nvidia-nccl wheel), or set FASTMLP_NCCL_LIBRARY to "
                           "a libnccl.so.2");
  }
  try {
    find(handle, "ncclGetVersion", lib.get_version, lib.path);
    find(handle, "ncclGetUniqueId", lib.get_unique_id, lib.path);
    find(handle, "ncclCommInitRank", lib.comm_init_rank, lib.path);
    find(handle, "ncclCommDestroy", lib.comm_destroy, lib.path);
    find(handle, "ncclCommAbort", lib.comm_abort, lib.path);
    find(handle, "ncclCommGetAsyncError", lib.comm_get_async_error, lib.path);
    find(handle, "ncclAllReduce", lib.all_reduce, lib.path);
    find(handle, "ncclGroupStart", lib.group_start, lib.path);
    find(handle, "ncclGroupEnd", lib.group_end, lib.path);
    find(handle, "ncclGetErrorString", lib.get_error_string, lib.path);
    find(handle, "ncclGetLastError", lib.get_last_error, lib.path, false);
    const Result r = lib.get_version(&lib.version);
    if (r != kSuccess) throw DistributedError("ncclGetVersion failed: " + lib.describe(r));
  } catch (...) {
    dlclose(handle);
    throw;
  }
  // The handle stays open for the process: communicators and captured steps call into it.
  return lib;
}

}  // namespace

const Library& library(const std::string& path) {
  static std::mutex mutex;
  // Never freed: communicators, and threads left aborting one, use it until the process ends.
  static Library* opened = nullptr;
  std::lock_guard<std::mutex> held(mutex);
  if (!opened) opened = new Library(open_library(path));  // a failure is retried next call
  return *opened;
}

}  // namespace fastmlp::cuda::nccl
