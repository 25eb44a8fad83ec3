// Communicator: what data-parallel training needs from a collective engine (MPI today; NCCL on
// GPUs is the next implementation). The engine sums each step's gradients and each epoch's
// counters with it; nothing here knows about layers or backends.
//
// Every call is collective: all ranks make the same calls in the same order. A call that does not
// complete within the communicator's timeout (a rank died, or stopped calling) throws
// DistributedError instead of waiting forever; after that the communicator refuses further calls,
// since the collective it gave up on may still be pending.
#pragma once
#include <cstdint>
#include <stdexcept>

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
  // data[i] = the sum over ranks of data[i], host memory, the same result on every rank.
  virtual void allreduce_sum(float* data, int64_t n) = 0;
  virtual void allreduce_sum(double* data, int64_t n) = 0;

  // What the collectives cost so far (bench/bench_distributed.py reports the all-reduce's share of a step).
  struct Stats {
    int64_t calls = 0;
    int64_t bytes = 0;     // summed per rank
    double seconds = 0.0;  // in the calls, waiting for the other ranks included
  };
  virtual Stats stats() const = 0;
};

}  // namespace fastmlp
