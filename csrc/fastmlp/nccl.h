// NCCL for data-parallel GPU ranks, through the CUDA plugin (which opens NCCL at run time:
// cuda/nccl_library.h). Every function throws DistributedError with the reason when the plugin,
// NCCL or the GPU is missing.
#pragma once
#include <memory>
#include <string>

#include "fastmlp/communicator.h"

namespace fastmlp {

struct NcclLibrary {
  int version = 0;   // NCCL_VERSION_CODE (22809 for 2.28.9)
  std::string path;  // the file opened
};

// Opens NCCL (`library`: a libnccl.so.2 path, or empty for the loader's search) once per process.
NcclLibrary nccl_library(const std::string& library);
// A new communicator id: rank 0 makes it and sends its 128 bytes to every rank.
std::string nccl_unique_id(const std::string& library);
// Joins the communicator `id` of `size` ranks as `rank` on cuda:`device` (collective: all ranks
// call it; DistributedError after timeout_seconds).
std::shared_ptr<Communicator> make_nccl_communicator(const std::string& library, const std::string& id, int rank,
                                                     int size, int device, double timeout_seconds);

}  // namespace fastmlp
