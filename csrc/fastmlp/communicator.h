// Communicator: what data-parallel training needs from a collective engine: MPI for CPU ranks
// (mpi_communicator.cpp), NCCL for GPU ranks (the CUDA plugin's cuda/nccl_communicator.cu). The
// engine sums each step's gradients and each epoch's counters with it; nothing here knows about
// layers or backends.
//
// Every call is collective: all ranks make the same calls in the same order. A call that does not
// complete within the communicator's timeout (a rank died, or stopped calling) throws
// DistributedError instead of waiting forever; after that the communicator refuses further calls,
// since the collective it gave up on may still be pending.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace fastmlp {

class DistributedError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Host memory: data[i] = the sum over ranks of data[i], the same result on every rank; returns
  // when done.
  virtual void allreduce_sum(float* data, int64_t n) = 0;
  virtual void allreduce_sum(double* data, int64_t n) = 0;

  // The device whose memory allreduce_gradients sums: "cpu" (host memory, MPI) or "cuda:N" (that
  // GPU's memory, NCCL). The engine takes a communicator only for a backend of the same device.
  virtual std::string device() const { return "cpu"; }

  // One training step's sum, in place, in the device's memory: the gradients (n values) and the
  // step's non-finite flag (0 or 1 on each rank; afterwards 1 when any rank set it), so that every
  // rank applies or skips the same update. A host communicator returns when done; a device
  // communicator queues the sum on `stream` (the backend's, see Backend::native_stream) — also
  // while the backend captures the step — and wait(stream) completes it, which must come before
  // the next allreduce_sum.
  virtual void allreduce_gradients(float* grads, int64_t n, int32_t* nonfinite, void* stream) = 0;
  virtual void allreduce_gradients(double* grads, int64_t n, int32_t* nonfinite, void* stream) = 0;

  // Returns when the sums queued on `stream` so far have completed, or throws DistributedError
  // after the timeout. Call it before the host reads what the step wrote: a device that waits for
  // a dead rank would otherwise block that read forever. Nothing to do for host communicators.
  virtual void wait(void* /*stream*/) {}

  // What the collectives cost so far (bench/bench_distributed.py reports the all-reduce's share of a step).
  struct Stats {
    int64_t calls = 0;
    int64_t bytes = 0;     // summed per rank
    double seconds = 0.0;  // in the calls, waiting for the other ranks included (a device
                           // communicator: in its host sums and in wait())
  };
  virtual Stats stats() const = 0;
};

}  // namespace fastmlp
