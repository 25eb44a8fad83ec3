// A Communicator over NCCL for the ranks' GPUs (fastmlp/communicator.h).
#pragma once
#include <memory>
#include <string>

#include "fastmlp/communicator.h"
#include "nccl_library.h"

namespace fastmlp::cuda {

// Joins the NCCL communicator of `size` ranks named by `id` (rank 0's ncclGetUniqueId, which every
// rank received from it) as `rank`, on GPU `device`. Collective: every rank makes it, within
// `timeout_seconds`, or DistributedError.
std::unique_ptr<Communicator> make_nccl_communicator(const nccl::Library& lib, const nccl::UniqueId& id, int rank,
                                                     int size, int device, double timeout_seconds);

}  // namespace fastmlp::cuda
