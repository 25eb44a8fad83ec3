// Launch shapes shared by the element-wise kernels: 256 threads a block, and a grid capped so
// that grid-stride loops cover very large tensors with a bounded number of blocks.
#pragma once
#include <cstdint>

namespace fastmlp::cuda {

constexpr int kElementwiseThreads = 256;

inline int elementwise_blocks(int64_t n) {
  const int64_t b = (n + kElementwiseThreads - 1) / kElementwiseThreads;
  return int(b < 65535 * 8 ? (b > 0 ? b : 1) : 65535 * 8);
}

}  // namespace fastmlp::cuda
