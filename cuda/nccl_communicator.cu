// NCCL between the ranks' GPUs (nccl_communicator.h).
//
// A step's gradient sum (allreduce_gradients) is queued on the backend's stream, where the step
// made the gradients; while the backend captures the step, NCCL's kernels become part of the
// graph, so each replay sums again with no host call. Host sums (an epoch's counters, fit's
// bookkeeping) go through a device scratch buffer on the communicator's own stream; the engine
// waits for each step's sum before anything else, so the ranks' collectives stay in one order.
// Every host wait polls with a deadline: a rank that died leaves the others' NCCL kernels
// spinning, and after the timeout ncclCommAbort frees them and DistributedError is raised, instead
// of a read of the device blocking forever.
#include "nccl_communicator.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>

namespace fastmlp::cuda {
namespace {

using Clock = std::chrono::steady_clock;

std::string seconds_text(double s) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", s);
  return text;
}

// ncclCommInitRank on a thread of its own, so that a rank that never arrives costs the timeout
// rather than a hang. A thread given up on keeps its shared state (it may still finish).
nccl::Comm init_rank(const nccl::Library& lib, const nccl::UniqueId& id, int rank, int size, int device,
                     double timeout_seconds) {
  struct Joining {
    std::mutex mutex;
    std::condition_variable done_cv;
    bool done = false;
    bool abandoned = false;  // the caller gave up: a late communicator is aborted, not kept
    nccl::Result result = nccl::kSuccess;
    cudaError_t cuda = cudaSuccess;
    nccl::Comm comm = nullptr;
  };
  auto joining = std::make_shared<Joining>();
  std::thread([joining, &lib, id, rank, size, device] {
    nccl::Comm comm = nullptr;
    nccl::Result result = nccl::kSuccess;
    const cudaError_t cuda = cudaSetDevice(device);
    if (cuda == cudaSuccess) result = lib.comm_init_rank(&comm, size, id, rank);
    std::lock_guard<std::mutex> held(joining->mutex);
    if (joining->abandoned) {
      if (result == nccl::kSuccess && comm) lib.comm_abort(comm);  // no graph holds it yet: returns
      return;
    }
    joining->cuda = cuda;
    joining->result = result;
    joining->comm = comm;
    joining->done = true;
    joining->done_cv.notify_all();
  }).detach();  // lib is the process's (nccl::library), never freed
  std::unique_lock<std::mutex> held(joining->mutex);
  if (!joining->done_cv.wait_for(held, std::chrono::duration<double>(timeout_seconds), [&] { return joining->done; })) {
    joining->abandoned = true;
    throw DistributedError("rank " + std::to_string(rank) + " of " + std::to_string(size) + ": NCCL's communicator (" +
                           "ncclCommInitRank) was not complete after " + seconds_text(timeout_seconds) +
                           " s; another rank died or did not join");
  }
  if (joining->cuda != cudaSuccess)
    throw DistributedError("NCCL needs cuda:" + std::to_string(device) + ": " + cudaGetErrorString(joining->cuda));
  if (joining->result != nccl::kSuccess)
    throw DistributedError("ncclCommInitRank failed on cuda:" + std::to_string(device) + ": " +
                           lib.describe(joining->result));
  return joining->comm;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const nccl::Library& lib, nccl::Comm comm, int rank, int size, int device, double timeout)
      : lib_(lib), comm_(comm), rank_(rank), size_(size), device_(device), timeout_(timeout) {
    bind();
    cudaError_t err = cudaStreamCreateWithFlags(&own_stream_, cudaStreamNonBlocking);
    if (err == cudaSuccess) err = cudaEventCreateWithFlags(&done_, cudaEventDisableTiming);
    if (err != cudaSuccess) {
      release_cuda();
      lib_.comm_destroy(comm_);
      throw DistributedError(std::string("NCCL communicator: ") + cudaGetErrorString(err));
    }
  }

  ~NcclCommunicator() override {
    bind();
    if (broken_) return;  // aborted: its buffers may still be referenced by kernels that never ran
    cudaStreamSynchronize(own_stream_);
    lib_.comm_destroy(comm_);  // local: frees this rank's resources
    release_cuda();
    cudaGetLastError();  // at interpreter exit the runtime may already be unloading
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string device() const override { return "cuda:" + std::to_string(device_); }

  void allreduce_sum(float* data, int64_t n) override { host_sum(data, n, nccl::kFloat32); }
  void allreduce_sum(double* data, int64_t n) override { host_sum(data, n, nccl::kFloat64); }

  void allreduce_gradients(float* grads, int64_t n, int32_t* nonfinite, void* stream) override {
    queue_gradients(grads, n, nccl::kFloat32, sizeof(float), nonfinite, stream);
  }
  void allreduce_gradients(double* grads, int64_t n, int32_t* nonfinite, void* stream) override {
    queue_gradients(grads, n, nccl::kFloat64, sizeof(double), nonfinite, stream);
  }

  void wait(void* stream) override {
    std::lock_guard<std::mutex> held(mutex_);
    usable();
    bind();
    const auto started = Clock::now();
    check_cuda(cudaEventRecord(done_, static_cast<cudaStream_t>(stream)), "cudaEventRecord");
    await(done_, "a step's gradient sum");
    stats_.seconds += std::chrono::duration<double>(Clock::now() - started).count();
  }

  Stats stats() const override {
    std::lock_guard<std::mutex> held(mutex_);
    return stats_;
  }

 private:
  void bind() const { cudaSetDevice(device_); }

  void usable() const {
    if (broken_)
      throw DistributedError("an earlier collective of this NCCL communicator timed out or failed: the ranks are out "
                             "of step; end the job (restart every rank)");
  }

  void queue_gradients(void* grads, int64_t n, nccl::DataType type, size_t elem, int32_t* nonfinite, void* stream) {
    std::lock_guard<std::mutex> held(mutex_);
    usable();
    bind();
    const auto s = static_cast<cudaStream_t>(stream);
    // One group, one launch: the gradients summed, the flag the maximum over the ranks (a sum
    // would grow step after step once it is set, and overflow).
    check_nccl(lib_.group_start(), "ncclGroupStart");
    const nccl::Result sum = lib_.all_reduce(grads, grads, size_t(n), type, nccl::kSum, comm_, s);
    const nccl::Result flag = lib_.all_reduce(nonfinite, nonfinite, 1, nccl::kInt32, nccl::kMax, comm_, s);
    check_nccl(lib_.group_end(), "ncclGroupEnd");
    check_nccl(sum, "ncclAllReduce of the gradients");
    check_nccl(flag, "ncclAllReduce of the non-finite flag");
    stats_.calls += 1;
    stats_.bytes += n * int64_t(elem) + int64_t(sizeof(int32_t));
  }

  template <typename V>
  void host_sum(V* data, int64_t n, nccl::DataType type) {
    std::lock_guard<std::mutex> held(mutex_);
    usable();
    if (n <= 0) return;
    bind();
    const auto started = Clock::now();
    const size_t bytes = size_t(n) * sizeof(V);
    reserve(bytes);
    std::memcpy(staging_, data, bytes);  // page-locked: the copies are asynchronous, the wait ours
    check_cuda(cudaMemcpyAsync(scratch_, staging_, bytes, cudaMemcpyHostToDevice, own_stream_), "cudaMemcpyAsync");
    check_nccl(lib_.all_reduce(scratch_, scratch_, size_t(n), type, nccl::kSum, comm_, own_stream_), "ncclAllReduce");
    check_cuda(cudaMemcpyAsync(staging_, scratch_, bytes, cudaMemcpyDeviceToHost, own_stream_), "cudaMemcpyAsync");
    check_cuda(cudaEventRecord(done_, own_stream_), "cudaEventRecord");
    await(done_, "an all-reduce of fit's bookkeeping");
    std::memcpy(data, staging_, bytes);
    stats_.calls += 1;
    stats_.bytes += int64_t(bytes);
    stats_.seconds += std::chrono::duration<double>(Clock::now() - started).count();
  }

  void reserve(size_t bytes) {
    if (bytes <= capacity_) return;
    const size_t grown = std::max(bytes, 2 * capacity_);
    if (scratch_) cudaFree(scratch_);
    if (staging_) cudaFreeHost(staging_);
    scratch_ = nullptr, staging_ = nullptr, capacity_ = 0;
    check_cuda(cudaMalloc(&scratch_, grown), "cudaMalloc");
    check_cuda(cudaHostAlloc(&staging_, grown, cudaHostAllocDefault), "cudaHostAlloc");
    capacity_ = grown;
  }

  // Polls `event` until it completed, NCCL reported an error, or the timeout passed.
  void await(cudaEvent_t event, const char* what) {
    const auto start = Clock::now();
    const auto limit = std::chrono::duration<double>(timeout_);
    for (int polls = 0;; ++polls) {
      const cudaError_t q = cudaEventQuery(event);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) fail(std::string("CUDA error while waiting for ") + what + ": " + cudaGetErrorString(q));
      nccl::Result async = nccl::kSuccess;
      if (lib_.comm_get_async_error(comm_, &async) == nccl::kSuccess && async != nccl::kSuccess &&
          async != nccl::kInProgress)
        fail(std::string("NCCL failed during ") + what + ": " + lib_.describe(async, comm_));
      const auto waited = Clock::now() - start;
      if (waited > limit)
        fail("rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ": " + what +
             " was still incomplete after " + seconds_text(timeout_) +
             " s; another rank died, failed or stopped training (see its output)");
      // A step's sum is usually done within microseconds of the host asking: spin first, then
      // give the core away.
      if (waited < std::chrono::milliseconds(2)) std::this_thread::yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  void check_nccl(nccl::Result r, const char* what) {
    if (r != nccl::kSuccess && r != nccl::kInProgress) fail(std::string(what) + " failed: " + lib_.describe(r, comm_));
  }
  void check_cuda(cudaError_t e, const char* what) {
    if (e != cudaSuccess) {
      cudaGetLastError();
      fail(std::string(what) + " failed: " + cudaGetErrorString(e));
    }
  }

  // Aborts the communicator (its kernels stop waiting for the other ranks) and throws; every
  // later call throws too. ncclCommAbort sets its abort flag at once, then waits until no CUDA
  // graph holds the communicator's collectives: on a thread of its own, so this thread can throw,
  // and the engine drop its captures (Engine::train_batches), which lets the abort finish.
  [[noreturn]] void fail(const std::string& why) {
    if (!broken_) {
      broken_ = true;
      std::thread([abort = lib_.comm_abort, comm = comm_] { abort(comm); }).detach();
    }
    throw DistributedError(why);
  }

  void release_cuda() {
    if (scratch_) cudaFree(scratch_);
    if (staging_) cudaFreeHost(staging_);
    if (done_) cudaEventDestroy(done_);
    if (own_stream_) cudaStreamDestroy(own_stream_);
    scratch_ = nullptr, staging_ = nullptr, done_ = nullptr, own_stream_ = nullptr;
  }

  const nccl::Library& lib_;
  nccl::Comm comm_;
  int rank_, size_, device_;
  double timeout_;
  cudaStream_t own_stream_ = nullptr;
  cudaEvent_t done_ = nullptr;
  void* scratch_ = nullptr;  // device
  void* staging_ = nullptr;  // page-locked host
  size_t capacity_ = 0;
  mutable std::mutex mutex_;
  bool broken_ = false;
  Stats stats_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const nccl::Library& lib, const nccl::UniqueId& id, int rank,
                                                     int size, int device, double timeout_seconds) {
  if (size < 1 || rank < 0 || rank >= size)
    throw DistributedError("NCCL rank " + std::to_string(rank) + " / size " + std::to_string(size) + " out of range");
  if (!(timeout_seconds > 0.0)) throw DistributedError("the collective timeout must be > 0 seconds");
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || device < 0 || device >= count) {
    cudaGetLastError();
    throw DistributedError("NCCL needs cuda:" + std::to_string(device) + ", but " +
                           (err != cudaSuccess ? std::string("no CUDA device is usable (") + cudaGetErrorString(err) + ")"
                                               : std::to_string(count) + " CUDA device(s) are visible"));
  }
  const nccl::Comm comm = init_rank(lib, id, rank, size, device, timeout_seconds);
  return std::make_unique<NcclCommunicator>(lib, comm, rank, size, device, timeout_seconds);
}

}  // namespace fastmlp::cuda
