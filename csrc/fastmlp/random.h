// Deterministic random numbers for initialization and shuffling: xoshiro256** seeded by
// splitmix64, so a seed gives the same weights and batch order on every platform and backend.
#pragma once
#include <cstdint>
#include <vector>

namespace fastmlp {

class Random {
 public:
  explicit Random(uint64_t seed);
  uint64_t next();
  double uniform();          // [0, 1)
  double normal();           // standard normal (Box-Muller)
  uint64_t below(uint64_t n);  // uniform integer in [0, n), unbiased

 private:
  uint64_t s_[4];
  bool has_spare_ = false;
  double spare_ = 0.0;
};

// 0, 1, ..., n-1: the order of an unshuffled epoch.
std::vector<int32_t> identity_order(int64_t n);

// A Fisher-Yates permutation of 0..n-1 drawn from Random(seed).
std::vector<int32_t> shuffled_indices(int64_t n, uint64_t seed);

// Seed of stream `stream` (e.g. an epoch number) derived from a user seed.
uint64_t derive_seed(uint64_t seed, uint64_t stream);

}  // namespace fastmlp
