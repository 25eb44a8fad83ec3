// NCCL through the CUDA plugin's entry points (fastmlp/nccl.h).
#include "fastmlp/nccl.h"

#include "fastmlp/cuda_plugin.h"

namespace fastmlp {
namespace {

template <typename F>
F plugin_function(const char* name) {
  std::string error;
  void* symbol = cuda_plugin_symbol(name, &error);
  if (!symbol) throw DistributedError("NCCL is reached through the CUDA backend, which is unavailable: " + error);
  return reinterpret_cast<F>(symbol);
}

constexpr size_t kUniqueIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES

}  // namespace

NcclLibrary nccl_library(const std::string& library) {
  const auto version = plugin_function<CudaPluginNcclVersionFn>("fastmlp_cuda_nccl_version");
  char path[1024] = {}, error[1024] = {};
  NcclLibrary lib;
  lib.version = version(library.c_str(), path, sizeof path, error, sizeof error);
  if (lib.version <= 0) throw DistributedError(error);
  lib.path = path;
  return lib;
}

std::string nccl_unique_id(const std::string& library) {
  const auto unique_id = plugin_function<CudaPluginNcclUniqueIdFn>("fastmlp_cuda_nccl_unique_id");
  std::string id(kUniqueIdBytes, '\0');
  char error[1024] = {};
  if (!unique_id(library.c_str(), id.data(), error, sizeof error)) throw DistributedError(error);
  return id;
}

std::shared_ptr<Communicator> make_nccl_communicator(const std::string& library, const std::string& id, int rank,
                                                     int size, int device, double timeout_seconds) {
  if (id.size() != kUniqueIdBytes)
    throw DistributedError("an NCCL communicator id has " + std::to_string(kUniqueIdBytes) + " bytes, got " +
                           std::to_string(id.size()));
  const auto make = plugin_function<CudaPluginNcclCommunicatorFn>("fastmlp_cuda_nccl_communicator");
  char error[1024] = {};
  Communicator* c = make(library.c_str(), id.data(), rank, size, device, timeout_seconds, error, sizeof error);
  if (!c) throw DistributedError(error);
  return std::shared_ptr<Communicator>(c);  // its destructor is the plugin's (the plugin stays loaded)
}

}  // namespace fastmlp
