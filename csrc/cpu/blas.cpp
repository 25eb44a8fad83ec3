// GEMM threading (fastmlp's pool, or the BLAS's when it is a system BLAS) and identification of
// the BLAS the CPU backend was linked with.
#include "cpu/blas.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/nonzero.h"
#include "cpu/thread_pool.h"
#include "cpu/vector_clones.h"

#if !defined(FASTMLP_SCIPY_OPENBLAS)
// Weak: present when the system BLAS is OpenBLAS, null for reference BLAS or others.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
extern "C" char* openblas_get_config(void) __attribute__((weak));
#endif

namespace fastmlp::cpu {
namespace {

void gemv_call(bool trans, int rows, int cols, float alpha, const float* A, int lda, const float* x, int incx,
               float* y) {
  FASTMLP_CBLAS(sgemv)(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, rows, cols, alpha, A, lda, x, incx, 0.0f, y,
                       1);
}
void gemv_call(bool trans, int rows, int cols, double alpha, const double* A, int lda, const double* x, int incx,
               double* y) {
  FASTMLP_CBLAS(dgemv)(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, rows, cols, alpha, A, lda, x, incx, 0.0, y,
                       1);
}

void gemm_call(bool ta, bool tb, int m, int n, int k, float alpha, const float* A, int lda, const float* B, int ldb,
               float beta, float* C, int ldc) {
  FASTMLP_CBLAS(sgemm)(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, alpha,
                       A, lda, B, ldb, beta, C, ldc);
}
void gemm_call(bool ta, bool tb, int m, int n, int k, double alpha, const double* A, int lda, const double* B,
               int ldb, double beta, double* C, int ldc) {
  FASTMLP_CBLAS(dgemm)(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, alpha,
                       A, lda, B, ldb, beta, C, ldc);
}

// y[0, n) = alpha * sum over t of x[rows[t]] * B's row rows[t], the rows of x's nonzero values
// (list_nonzero): the product a GEMV forms, in row order, without reading the other rows. A batch
// of one MNIST digit has about 80% zero pixels, and a ReLU layer's output about half. 784-100-10
// SGD at batch 1 on MNIST, alternated epochs in one process: the step took 0.79-0.88 of its time with the
// GEMV (2 and 1 threads); with ReLU, 0.82 (784-100-10) and 0.77 (784-512-10).
// Skipping x[i] = 0 differs from the GEMV only where B's row i holds an infinity or a NaN
// (0 * inf is NaN); a model's weights are finite (set_weights checks them, and a step that would
// make one non-finite is not taken).
template <typename T>
FASTMLP_VECTOR_CLONES void sparse_row_product(int n, T alpha, const T* __restrict x, const int* rows, int count,
                                              const T* __restrict B, int ldb, T* __restrict y) {
  // Asks for the rows 4 ahead: the skipped rows break the hardware prefetcher's stride, and a
  // row (100 floats: 7 cache lines) mostly comes from L2. Without it the batch-1 step of
  // 784-100-10 on MNIST took 1.35-1.39x as long (alternated runs, 2 threads).
  constexpr int kAhead = 4;
  std::fill(y, y + n, T(0));
  for (int t = 0; t < count; ++t) {
    if (t + kAhead < count) {
      const T* ahead = B + int64_t(rows[t + kAhead]) * ldb;
      for (int j = 0; j < n; j += 64 / int(sizeof(T))) __builtin_prefetch(ahead + j);
    }
    const T a = alpha * x[rows[t]];
    const T* __restrict row = B + int64_t(rows[t]) * ldb;
#pragma omp simd
    for (int j = 0; j < n; ++j) y[j] += a * row[j];
  }
}

template <typename T>
void add_scratch_row(T beta, int n, const T* y, T* C) {
  if (beta == T(1))
    for (int j = 0; j < n; ++j) C[j] += y[j];
}

// One row of C (a batch of one, or a thread's band of one) is a matrix-vector product: GEMV reads
// B once where GEMM first packs it into a copy (OpenBLAS's sgemm_itcopy took 12% of a batch-1
// step of 784-100-10 on an AVX2 machine).
template <typename T>
void blas_call(bool ta, bool tb, int m, int n, int k, T alpha, const T* A, int lda, const T* B, int ldb, T beta, T* C,
               int ldc) {
  if (m != 1 || n < 1 || k < 1 || (beta != T(0) && beta != T(1)))
    return gemm_call(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  // x: A's one row (ta: its one column, every lda-th value). GEMV writes y = alpha B x into C, or
  // into a scratch row then added to C when beta is 1, so that C's old values are summed as a
  // GEMM would. y is zeroed first: C may hold anything (a NaN left by an earlier batch), and
  // OpenBLAS's GEMV scales y by beta = 0 rather than overwriting it.
  thread_local std::vector<T> row;
  T* y = C;
  if (beta == T(1)) {
    row.resize(size_t(n));
    y = row.data();
  }
  thread_local std::vector<int> nonzero;  // C = x B with x contiguous: x's nonzero values
  int count = k;
  if (!ta && !tb) {
    nonzero.resize(size_t(k));
    count = list_nonzero(A, k, nonzero.data());
  }
  if (k - count >= kSparseRowZeros * k) {  // x is sparse (nonzero.h): the loop above, else the GEMV
    sparse_row_product(n, alpha, A, nonzero.data(), count, B, ldb, y);
  } else {
    std::fill(y, y + n, T(0));
    if (tb)  // C = x B^T, B n x k
      gemv_call(false, n, k, alpha, B, ldb, A, ta ? lda : 1, y);
    else  // C = x B, B k x n
      gemv_call(true, k, n, alpha, B, ldb, A, ta ? lda : 1, y);
  }
  add_scratch_row(beta, n, y, C);
}

// Below this many flops a GEMM runs on the calling thread alone. At 1 MFLOP one core takes
// about 10 us, and handing half to a worker costs a few. Measured with 784-100-10 SGD at batch
// 16 (us per row, 2 threads): on the first 2-core host (AVX-512), before the pool's joins waited
// awake, never split 5.6, split above 1 MFLOP 8.4, OpenBLAS's own threading 6.8; on an AVX2 host
// with today's pool, split above 1 MFLOP 5.0-5.5 against 6.6-6.9 at 2 MFLOP (its weight
// gradient, 2.5 MFLOP, ran on one core while the other waited), batches 4, 8 and 32 unchanged.
constexpr double kSplitFlops = 1e6;

// With the scipy-openblas32 wheel (fastmlp's private copy: its symbols carry a scipy_ prefix, so
// no other library in the process calls it) the BLAS runs single-threaded and fastmlp splits
// large products itself: one pool of threads, the one set_num_threads sizes, does all the work.
// Two pools on the same cores, OpenBLAS's spinning between calls, made a training step 1.9x
// slower under a competing process (1.39 against 0.74 s per epoch, 784-512-512-10 Adam at batch
// 128, bench_cpu.py --case contention), and OpenBLAS split 16-row products that are faster on
// one core. A system BLAS may be shared with NumPy, so its threading is left to it (and to
// set_num_threads, as before) rather than forced to one thread for the whole process.
#if defined(FASTMLP_SCIPY_OPENBLAS)
constexpr bool kSplitGemms = true;
[[maybe_unused]] const bool kBlasSingleThreaded = (scipy_openblas_set_num_threads(1), true);
#else
constexpr bool kSplitGemms = false;
#endif

// A few rows times a kernel split in bands (thread_pool.h's split_in_bands: a small batch's
// forward pass, or a small predict) is split by depth: each thread multiplies its band of the
// kernel's rows (of A's columns), and the bands' products are added in band order. 784-100-10
// SGD, 2 threads, alternated runs: batch 1 16.2-16.9 us per row before, 13.2-15.4 with the
// split, 11.1-11.7 once the pool's workers also looked for jobs every few pauses
// (thread_pool.cpp); batch 16 5.6 -> 5.3 and batch 100 3.1-3.5 -> 2.9-3.1 once the split covered
// 16 rows and the update every kernel split in bands. Above 16 rows, C is split in blocks as
// below (no partial products to add).
constexpr int kSplitDepthRows = 16;
template <typename T>
void gemm_split_depth(int m, int n, int k, T alpha, const T* A, int lda, const T* B, int ldb, T beta, T* C, int ldc) {
  const int parts = pool_threads();
  thread_local std::vector<T> partial;  // every element is written by its band's product
  partial.resize(size_t(parts - 1) * m * n);
  T* const scratch = partial.data();  // the caller's: thread_local names another vector in a worker
  run_parts(parts, [&](int p) {
    const int lo = int(int64_t(k) * p / parts), hi = int(int64_t(k) * (p + 1) / parts);
    if (p == 0)
      blas_call(false, false, m, n, hi - lo, alpha, A + lo, lda, B + int64_t(lo) * ldb, ldb, beta, C, ldc);
    else
      blas_call(false, false, m, n, hi - lo, alpha, A + lo, lda, B + int64_t(lo) * ldb, ldb, T(0),
                scratch + size_t(p - 1) * m * n, n);
  });
  for (int p = 1; p < parts; ++p)
    for (int i = 0; i < m; ++i) {
      const T* src = scratch + size_t(p - 1) * m * n + size_t(i) * n;
      T* dst = C + int64_t(i) * ldc;
      for (int j = 0; j < n; ++j) dst[j] += src[j];
    }
}

template <typename T>
void gemm_split(bool ta, bool tb, int m, int n, int k, T alpha, const T* A, int lda, const T* B, int ldb, T beta,
                T* C, int ldc) {
  const double flops = 2.0 * m * n * k;
  if (kSplitGemms && !ta && !tb && m <= kSplitDepthRows && split_in_bands(int64_t(k) * n) &&
      pool_threads() > 1 && k >= 2 * pool_threads())  // at least two kernel rows per band
    return gemm_split_depth(m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  int parts = kSplitGemms ? int(std::min<double>(pool_threads(), flops / kSplitFlops)) : 1;
  if (parts <= 1) return blas_call(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  // C = A^T B is a kernel's gradient (X^T dZ), which the update then reads in bands of the
  // kernel's rows (optimizer_step.h): split it in the same row bands, so each thread updates
  // the rows it wrote, still in its own cache, also when the kernel is square. Split in
  // columns, a 512 x 512 kernel's gradient moved between the cores every step.
  // 784-h-h-10 Adam, 2 threads, 6 alternated pairs of runs on a 2-core Xeon (AVX-512), median
  // time ratio: h = 512 at batch 32 0.93, at batch 128 0.97-0.98; h = 1024 at batch 128 0.96
  // (every pair faster); h = 256 and 2048 at batch 128, h = 512 at batch 512 and 2048 0.98-1.00.
  const bool columns = ta ? n > m : n >= m;
  if (columns) {  // blocks of columns, each a multiple of 16 (whole cache lines and vectors)
    const int units = (n + 15) / 16;
    parts = std::min(parts, units);
    run_parts(parts, [&](int p) {
      const int lo = std::min(n, units * p / parts * 16), hi = std::min(n, units * (p + 1) / parts * 16);
      if (hi > lo)
        blas_call(ta, tb, m, hi - lo, k, alpha, A, lda, tb ? B + int64_t(lo) * ldb : B + lo, ldb, beta, C + lo, ldc);
    });
  } else {  // blocks of rows
    const int units = (m + 7) / 8;
    parts = std::min(parts, units);
    run_parts(parts, [&](int p) {
      const int lo = std::min(m, units * p / parts * 8), hi = std::min(m, units * (p + 1) / parts * 8);
      if (hi > lo)
        blas_call(ta, tb, hi - lo, n, k, alpha, ta ? A + lo : A + int64_t(lo) * lda, lda, B, ldb, beta,
                  C + int64_t(lo) * ldc, ldc);
    });
  }
}

}  // namespace

void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* A, int lda, const float* B, int ldb,
          float beta, float* C, int ldc) {
  gemm_split(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
void gemm(bool ta, bool tb, int m, int n, int k, double alpha, const double* A, int lda, const double* B, int ldb,
          double beta, double* C, int ldc) {
  gemm_split(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

void blas_set_num_threads(int n) {
#if defined(FASTMLP_SCIPY_OPENBLAS)
  (void)n;  // stays single-threaded: the pool has the threads
#else
  if (openblas_set_num_threads) openblas_set_num_threads(n);
#endif
}

std::string blas_name() {
#if defined(FASTMLP_SCIPY_OPENBLAS)
  return std::string("scipy-openblas32 ") + scipy_openblas_get_config();
#else
  if (openblas_get_config) return std::string("system OpenBLAS ") + openblas_get_config();
  return "system BLAS (" FASTMLP_BLAS_LIBRARIES ")";
#endif
}

}  // namespace fastmlp::cpu
