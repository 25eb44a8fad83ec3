// The CPU backend's worker threads: its element-wise loops and its GEMMs (blas.cpp splits large
// products over them and keeps the scipy-openblas32 BLAS single-threaded).
//
// Not OpenMP: a process that loaded another OpenMP runtime first (PyTorch bundles libgomp, and
// `import torch` before `import fastmlp` is common) ran our loops on that runtime's threads,
// which spin between parallel regions unless OMP_WAIT_POLICY=passive was set before it loaded;
// on a 2-core machine they starved OpenBLAS's threads and a training step got 14x slower
// (measured: 9.8 s against 0.68 s per 20,000 rows). These workers sleep on a condition variable
// between jobs, whoever loaded what.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

namespace fastmlp::cpu {

// Whether an element-wise pass over this many elements should be split over the workers. Below
// 2^17 a parallel region costs more than it saves: waking a worker and
// waiting for it takes several microseconds, while an AVX-512 pass over 100k floats in cache
// takes about as long. Measured (784-100-10 SGD, 2 threads, us per row at batch 1 / 16 / 100):
// 2^14 gave 25.5 / 7.1 / 3.9, 2^17 gives 18.7 / 6.9 / 3.7; 784-512-512-10 Adam at batch 32 and
// 128 did not change (the 670k-parameter update still splits).
constexpr int64_t kParallelThreshold = 1 << 17;
inline bool parallel_pass(int64_t elements) { return elements > kParallelThreshold; }

// Whether a gather of this many elements from scattered rows should be split: it waits on memory
// rather than computing, so a second thread pays off sooner.
constexpr int64_t kParallelCopyThreshold = 1 << 15;
inline bool parallel_copy(int64_t elements) { return elements > kParallelCopyThreshold; }

// Whether a kernel of this many weights is split between the threads in bands of its rows. The
// same bands serve a small batch's forward product (blas.cpp's split by depth), the weight
// gradient of a kernel at least as tall as wide (blas.cpp's blocks of rows) and the update
// (optimizer_step.h), so each thread keeps its band in its own cache from step to step.
constexpr int64_t kKernelBandWeights = int64_t(1) << 15;
inline bool split_in_bands(int64_t weights) { return weights >= kKernelBandWeights; }

// Threads for parallel_for, the caller included: set_num_threads (default: the cores this
// process may run on).
void set_pool_threads(int n);
int pool_threads();

// Runs f(part) for part in [0, parts), part 0 in the calling thread, and returns when all are
// done. While another thread's job holds the workers (two models training at once) the parts
// run in the caller, one after another: never more threads than were asked for.
void run_parts(int parts, const std::function<void(int part)>& f);

// body(begin, end) over contiguous pieces of [0, n), one per thread, in parallel when `parallel`
// (callers pass whether the loop is large enough to pay for waking the workers).
template <typename F>
void parallel_for(int64_t n, bool parallel, F&& body) {
  const int parts = parallel ? int(std::min<int64_t>(pool_threads(), n)) : 1;
  if (parts <= 1) {
    if (n > 0) body(int64_t(0), n);
    return;
  }
  run_parts(parts, [&](int p) { body(n * p / parts, n * (p + 1) / parts); });
}

// A reduction: body(begin, end) returns the value of its piece, and the pieces' values are
// combined in piece order (combine(acc, value)), so the result does not depend on timing.
template <typename R, typename F, typename C>
R parallel_reduce(int64_t n, bool parallel, R zero, F&& body, C&& combine) {
  const int parts = parallel ? int(std::min<int64_t>(pool_threads(), n)) : 1;
  if (parts <= 1) return n > 0 ? body(int64_t(0), n) : zero;
  std::vector<R> piece(parts, zero);
  run_parts(parts, [&](int p) { piece[p] = body(n * p / parts, n * (p + 1) / parts); });
  R total = zero;
  for (const R& v : piece) total = combine(total, v);
  return total;
}

}  // namespace fastmlp::cpu
