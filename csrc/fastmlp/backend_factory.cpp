// Chooses a backend by name. The CUDA backend lives in a separate shared library
// (libfastmlp_cuda.so next to the core) that is opened only on request, so the core
// imports and runs on machines without an NVIDIA driver or CUDA libraries.
#include <dlfcn.h>

#include <mutex>
#include <stdexcept>
#include <string>

#include "cpu/blas.h"
#include "cpu/thread_pool.h"
#include "fastmlp/backend.h"
#include "fastmlp/cuda_plugin.h"

namespace fastmlp {

template <typename T>
std::unique_ptr<Backend<T>> make_cpu_backend();

namespace {

std::string own_directory() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&own_directory), &info) && info.dli_fname) {
    std::string path = info.dli_fname;
    const auto slash = path.rfind('/');
    if (slash != std::string::npos) return path.substr(0, slash + 1);
  }
  return "";
}

struct CudaPlugin {
  void* handle = nullptr;
  std::string error;
  CudaPluginQueryFn query = nullptr;
  CudaPluginCreateFn create = nullptr;
};

// Opens the plugin once per process: $FASTMLP_CUDA_PLUGIN, else next to this library.
const CudaPlugin& cuda_plugin() {
  static CudaPlugin plugin;
  static std::once_flag once;
  std::call_once(once, [] {
    const char* env = std::getenv("FASTMLP_CUDA_PLUGIN");
    const std::string path = env && *env ? env : own_directory() + "libfastmlp_cuda.so";
    plugin.handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!plugin.handle) {
      const char* e = dlerror();
      plugin.error = std::string("the CUDA backend could not be loaded (") + (e ? e : path) + ")";
      return;
    }
    plugin.query = reinterpret_cast<CudaPluginQueryFn>(dlsym(plugin.handle, "fastmlp_cuda_query"));
    plugin.create = reinterpret_cast<CudaPluginCreateFn>(dlsym(plugin.handle, "fastmlp_cuda_create"));
    const auto abi = reinterpret_cast<CudaPluginAbiFn>(dlsym(plugin.handle, "fastmlp_cuda_abi"));
    if (!plugin.query || !plugin.create || !abi) {
      plugin.error = "the CUDA plugin " + path + " lacks its entry points";
    } else if (std::string(abi()) != FASTMLP_BACKEND_ABI) {
      plugin.error = "the CUDA plugin " + path + " was built from other sources than this fastmlp (backend interface " +
                     abi() + ", expected " FASTMLP_BACKEND_ABI "): rebuild or reinstall fastmlp";
    }
    if (!plugin.error.empty()) plugin.query = nullptr, plugin.create = nullptr;
  });
  return plugin;
}

}  // namespace

void* cuda_plugin_symbol(const char* name, std::string* error) {
  const CudaPlugin& p = cuda_plugin();
  if (!p.error.empty()) {
    if (error) *error = p.error;
    return nullptr;
  }
  void* symbol = dlsym(p.handle, name);
  if (!symbol && error) *error = std::string("the CUDA plugin lacks ") + name;
  return symbol;
}

CudaInfo cuda_info() {
  CudaInfo info;
  const CudaPlugin& p = cuda_plugin();
  if (!p.error.empty()) {
    info.reason = p.error;
    return info;
  }
  char desc[1024] = {}, build[256] = {}, reason[512] = {};
  info.device_count = p.query(desc, sizeof desc, build, sizeof build, reason, sizeof reason);
  info.available = info.device_count > 0;
  info.description = desc;
  info.build = build;
  info.reason = reason;
  if (info.device_count < 0) info.device_count = 0;
  return info;
}

template <typename T>
std::unique_ptr<Backend<T>> make_backend(const std::string& device, const std::string& precision) {
  if (device == "cpu") {
    if (precision != "float32" && precision != "float64")
      throw std::invalid_argument("precision '" + precision + "' is only available on the CUDA backend");
    return make_cpu_backend<T>();
  }
  if (device.rfind("cuda", 0) != 0) throw std::invalid_argument("unknown device '" + device + "'");
  if constexpr (!std::is_same_v<T, float>) {
    throw std::invalid_argument("the CUDA backend computes in float32; float64 is CPU-only");
  } else {
    int index = 0;
    if (device.size() > 4) {
      if (device[4] != ':') throw std::invalid_argument("unknown device '" + device + "'");
      try {
        index = std::stoi(device.substr(5));
      } catch (...) {
        throw std::invalid_argument("bad CUDA device index in '" + device + "'");
      }
    }
    const CudaInfo info = cuda_info();
    if (!info.available) throw std::runtime_error("CUDA is not available: " + info.reason);
    if (index < 0 || index >= info.device_count)
      throw std::invalid_argument("CUDA device " + std::to_string(index) + " does not exist (" +
                                  std::to_string(info.device_count) + " present)");
    char err[1024] = {};
    Backend<float>* b = cuda_plugin().create(index, precision.c_str(), err, sizeof err);
    if (!b) throw std::runtime_error(err);
    return std::unique_ptr<Backend<float>>(b);
  }
}
template std::unique_ptr<Backend<float>> make_backend<float>(const std::string&, const std::string&);
template std::unique_ptr<Backend<double>> make_backend<double>(const std::string&, const std::string&);

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("number of threads must be >= 1, got " + std::to_string(n));
  cpu::set_pool_threads(n);
  cpu::blas_set_num_threads(n);
}
int get_num_threads() { return cpu::pool_threads(); }
std::string blas_info() { return cpu::blas_name(); }

}  // namespace fastmlp
