// NCCL, opened at run time: the build does not need NCCL and `import fastmlp` works without it.
// Data-parallel GPU ranks load it on first use, from the path fastmlp.distributed finds (the
// nvidia-nccl wheel's library, or $FASTMLP_NCCL_LIBRARY), else "libnccl.so.2" by the loader's
// search, which also finds the copy another library (PyTorch) already loaded.
//
// Only the part of NCCL's C API fastmlp calls is declared here, with the values nccl.h gives them
// (they are part of NCCL's stable ABI; nccl_library.cu checks them against nccl.h where the build
// machine has it).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <string>

namespace fastmlp::cuda::nccl {

using Result = int;  // ncclResult_t
constexpr Result kSuccess = 0;
constexpr Result kInProgress = 7;

using Comm = void*;  // ncclComm_t
constexpr size_t kUniqueIdBytes = 128;
struct UniqueId {  // ncclUniqueId
  char internal[kUniqueIdBytes];
};

enum DataType : int { kInt32 = 2, kFloat32 = 7, kFloat64 = 8 };  // ncclDataType_t
enum RedOp : int { kSum = 0, kMax = 2 };                           // ncclRedOp_t

struct Library {
  std::string path;  // what was opened
  int version = 0;   // NCCL_VERSION_CODE: 22809 for 2.28.9
  Result (*get_version)(int*) = nullptr;
  Result (*get_unique_id)(UniqueId*) = nullptr;
  Result (*comm_init_rank)(Comm*, int nranks, UniqueId id, int rank) = nullptr;
  Result (*comm_destroy)(Comm) = nullptr;
  Result (*comm_abort)(Comm) = nullptr;
  Result (*comm_get_async_error)(Comm, Result*) = nullptr;
  Result (*all_reduce)(const void* send, void* receive, size_t count, DataType, RedOp, Comm, cudaStream_t) = nullptr;
  Result (*group_start)() = nullptr;
  Result (*group_end)() = nullptr;
  const char* (*get_error_string)(Result) = nullptr;
  const char* (*get_last_error)(Comm) = nullptr;  // NCCL >= 2.13; null before

  // "NCCL error <code> (<its text>)[: <the communicator's last error>]"
  std::string describe(Result r, Comm comm = nullptr) const;
};

// Opens NCCL once per process (`path`, or "libnccl.so.2" when empty); later calls return the
// library opened first, whatever path they give (two NCCLs in one process would not interoperate).
// Throws DistributedError when it cannot be opened or lacks a function.
const Library& library(const std::string& path);

}  // namespace fastmlp::cuda::nccl
