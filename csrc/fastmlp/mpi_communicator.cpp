// MPI through the handles and library of mpi4py (mpi_communicator.h). Each sum is a non-blocking
// MPI_Iallreduce completed by polling MPI_Test, so a rank that died or stopped calling makes the
// others throw after the timeout instead of waiting forever.
#include "fastmlp/mpi_communicator.h"

#include <dlfcn.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace fastmlp {
namespace {

// H: the C type of every MPI handle of the library (int for MPICH, a pointer for Open MPI).
template <typename H>
class MpiCommunicator final : public Communicator {
  using Iallreduce = int (*)(const void*, void*, int, H, H, H, H*);
  using Test = int (*)(H*, int*, void*);

 public:
  MpiCommunicator(void* library, const MpiHandles& h)
      : library_(library), handles_(h), status_(std::max(h.status_bytes, 64) + 64) {
    iallreduce_ = reinterpret_cast<Iallreduce>(dlsym(library, "MPI_Iallreduce"));
    test_ = reinterpret_cast<Test>(dlsym(library, "MPI_Test"));
    if (!iallreduce_ || !test_) {
      dlclose(library_);
      throw DistributedError("MPI_Iallreduce / MPI_Test not found in the MPI library mpi4py loaded (" + h.library +
                             "); an MPI-3 library is needed");
    }
  }
  ~MpiCommunicator() override {
    if (broken_) {  // a collective given up on may still use the buffers: leave them to the process
      new std::vector<char>(std::move(send_));
      new std::vector<char>(std::move(receive_));
      new std::vector<char>(std::move(status_));
    }
    dlclose(library_);
  }
  int rank() const override { return handles_.rank; }
  int size() const override { return handles_.size; }
  void allreduce_sum(float* data, int64_t n) override { sum(data, n, handles_.float_type, nullptr); }
  void allreduce_sum(double* data, int64_t n) override { sum(data, n, handles_.double_type, nullptr); }
  // Host memory: the flag travels as one more value after the gradients, in the same message.
  void allreduce_gradients(float* grads, int64_t n, int32_t* nonfinite, void*) override {
    sum(grads, n, handles_.float_type, nonfinite);
  }
  void allreduce_gradients(double* grads, int64_t n, int32_t* nonfinite, void*) override {
    sum(grads, n, handles_.double_type, nonfinite);
  }

 private:
  static H handle(uint64_t v) {  // the handle's bits (an int handle's are the low 32)
    if constexpr (std::is_pointer_v<H>) return reinterpret_cast<H>(static_cast<uintptr_t>(v));
    else return static_cast<H>(static_cast<uint32_t>(v));
  }

  Stats stats() const override {
    std::lock_guard<std::mutex> held(mutex_);
    return stats_;
  }

  // data[0..n) and, when flag is not null, the flag as value n (afterwards 1 when any rank set it).
  template <typename V>
  void sum(V* data, int64_t n, uint64_t type, int32_t* flag) {
    std::lock_guard<std::mutex> held(mutex_);  // one collective at a time from this process
    const auto started = std::chrono::steady_clock::now();
    if (broken_)
      throw DistributedError("an earlier collective of this communicator timed out or failed: the ranks are out of "
                             "step; end the job (restart every rank)");
    const int64_t total = n + (flag ? 1 : 0);
    for (int64_t first = 0; first < total;) {  // MPI counts are ints
      const int count = int(std::min<int64_t>(total - first, INT_MAX / 2));
      const int64_t from_data = std::max<int64_t>(0, std::min<int64_t>(count, n - first));
      // Both buffers are the communicator's own: a collective given up on after the timeout may
      // still read or write them later, never the caller's memory (and MPI_IN_PLACE's value
      // differs between libraries).
      send_.resize(size_t(count) * sizeof(V));
      receive_.resize(send_.size());
      V* out = reinterpret_cast<V*>(send_.data());
      std::memcpy(out, data + first, size_t(from_data) * sizeof(V));
      if (from_data < count) out[from_data] = *flag ? V(1) : V(0);  // the last chunk ends with the flag
      H request{};
      int rc = iallreduce_(send_.data(), receive_.data(), count, handle(type), handle(handles_.sum_op),
                           handle(handles_.comm), &request);
      if (rc != 0) fail("MPI_Iallreduce returned error code " + std::to_string(rc));
      wait(request);
      const V* in = reinterpret_cast<const V*>(receive_.data());
      std::memcpy(data + first, in, size_t(from_data) * sizeof(V));
      if (from_data < count) *flag = in[from_data] != V(0) ? 1 : 0;
      first += count;
    }
    stats_.calls += 1;
    stats_.bytes += total * int64_t(sizeof(V));
    stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  }

  void wait(H& request) {
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    const auto limit = std::chrono::duration<double>(handles_.timeout_seconds);
    for (int polls = 0;; ++polls) {
      int done = 0;
      const int rc = test_(&request, &done, status_.data());
      if (rc != 0) fail("MPI_Test returned error code " + std::to_string(rc));
      if (done) return;
      // Spin briefly (the other ranks are usually a step's tail away), then give the core away:
      // ranks often share cores with each other and with their BLAS threads.
      if (polls < 256) continue;
      const auto waited = clock::now() - start;
      if (waited > limit)
        fail("rank " + std::to_string(handles_.rank) + " of " + std::to_string(handles_.size) +
             ": an all-reduce (of gradients or of fit's bookkeeping) was still incomplete after " +
             seconds_text(handles_.timeout_seconds) + " s; another rank died, failed or stopped training (see its output)");
      if (waited < std::chrono::milliseconds(20)) sched_yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

  static std::string seconds_text(double s) {
    char text[32];
    std::snprintf(text, sizeof text, "%g", s);
    return text;
  }

  [[noreturn]] void fail(const std::string& why) {
    broken_ = true;
    throw DistributedError(why);
  }

  void* library_;
  MpiHandles handles_;
  Iallreduce iallreduce_ = nullptr;
  Test test_ = nullptr;
  std::vector<char> status_;  // MPI_Status is written here (MPI_STATUS_IGNORE's value differs too)
  std::vector<char> send_, receive_;
  mutable std::mutex mutex_;
  bool broken_ = false;
  Stats stats_;
};

}  // namespace

std::shared_ptr<Communicator> make_mpi_communicator(const MpiHandles& h) {
  if (h.size < 1 || h.rank < 0 || h.rank >= h.size) throw DistributedError("MPI rank / size out of range");
  if (!(h.timeout_seconds > 0.0)) throw DistributedError("the collective timeout must be > 0 seconds");
  if (h.handle_bytes != int(sizeof(int)) && h.handle_bytes != int(sizeof(void*)))
    throw DistributedError("unsupported MPI handle size " + std::to_string(h.handle_bytes));
  // RTLD_NOLOAD: only the library mpi4py already loaded, never a second MPI.
  void* library = dlopen(h.library.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (!library) throw DistributedError("mpi4py's MPI module " + h.library + " is not loaded in this process");
  if (h.handle_bytes == int(sizeof(int))) return std::make_shared<MpiCommunicator<int>>(library, h);
  return std::make_shared<MpiCommunicator<void*>>(library, h);
}

}  // namespace fastmlp
