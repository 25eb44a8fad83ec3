// The CPU backend's element-wise loops over one thread's piece [lo, hi) of a pass. Each is
// compiled once per vector width (vector_clones.h); cpu_backend.cpp splits passes over threads
// and calls these. The per-element formulas are math.h's.
//
// Included by cpu_backend.cpp only (internal linkage: the clones stay private to it).
#pragma once
#include <cstdint>
#include <utility>

#include "cpu/vector_clones.h"
#include "fastmlp/math.h"

namespace fastmlp::cpu {
namespace {

// Y[i, :] = act(Y[i, :] + b) for rows [lo, hi) of a rows x out matrix (Y holds X W).
template <Activation K, typename T>
FASTMLP_VECTOR_CLONES void bias_activate_rows(int64_t lo, int64_t hi, int out, const T* __restrict b, T param,
                                              T* __restrict Y) {
  for (int64_t i = lo; i < hi; ++i) {
    T* y = Y + i * out;
#pragma omp simd
    for (int j = 0; j < out; ++j) y[j] = math::activate(K, param, y[j] + b[j]);
  }
}

// Y = act(X).
template <Activation K, typename T>
FASTMLP_VECTOR_CLONES void activate_range(int64_t lo, int64_t hi, const T* __restrict X, T param, T* __restrict Y) {
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) Y[i] = math::activate(K, param, X[i]);
}

// dX *= act'(X), the derivative taken from the activation's output X.
template <Activation K, typename T>
FASTMLP_VECTOR_CLONES void scale_by_activation_grad(int64_t lo, int64_t hi, const T* __restrict X, T param,
                                                    T* __restrict dX) {
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) dX[i] *= math::activation_grad_from_output(K, param, X[i]);
}

// dX = dY * act'(X) * x_act'(X): X is the activation's input (for GELU/SiLU the derivative needs
// it) and its producer's output. dX may be dY (no __restrict on those two).
template <Activation K, Activation XK, typename T>
FASTMLP_VECTOR_CLONES void activation_backward_range(int64_t lo, int64_t hi, const T* X, const T* Y, const T* dY,
                                                     T param, T x_param, T* dX) {
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i)
    dX[i] = dY[i] * math::activation_grad(K, param, X[i], Y[i]) *
            math::activation_grad_from_output(XK, x_param, X[i]);
}

// The Philox words that decide dropout block `block` (elements 64 block + j, j < 64, in order;
// math::dropout_counter): its 16 counters are one vector, each giving four words.
inline __attribute__((always_inline)) void dropout_block_words(uint64_t seed, int64_t step, int64_t block,
                                                               uint32_t* __restrict words) {
  constexpr int kL = int(math::kDropoutCounters);
  const uint64_t counter0 = uint64_t(block) * kL;
#pragma omp simd
  for (int l = 0; l < kL; ++l)
    math::philox4x32_10(seed, counter0 + l, uint64_t(step), words[l], words[kL + l], words[2 * kL + l],
                        words[3 * kL + l]);
}

// Calls apply(i, keep) for i in [lo, hi) in order: element i of the batch is element first + i
// of the global batch (first: TrainCounters::row_offset * cols), kept by math::dropout_keep.
// Whole blocks are drawn 16 counters at a time; the partial blocks at either end element by
// element (a thread's piece may start and end anywhere).
template <typename Apply>
inline __attribute__((always_inline)) void for_dropout_decisions(int64_t lo, int64_t hi, int64_t first, uint64_t seed,
                                                                 int64_t step, double rate, Apply&& apply) {
  constexpr int64_t kBlock = math::kDropoutBlock;
  const uint32_t threshold = math::dropout_threshold(rate);
  alignas(64) uint32_t words[kBlock];
  int64_t i = lo;
  for (; i < hi && (first + i) % kBlock != 0; ++i) apply(i, math::dropout_keep(seed, step, first + i, rate));
  for (; hi - i >= kBlock; i += kBlock) {
    dropout_block_words(seed, step, (first + i) / kBlock, words);
#pragma omp simd
    for (int64_t j = 0; j < kBlock; ++j) apply(i + j, words[j] >= threshold);
  }
  for (; i < hi; ++i) apply(i, math::dropout_keep(seed, step, first + i, rate));
}

// Y = X * keep / (1 - rate).
template <typename T>
FASTMLP_VECTOR_CLONES void dropout_forward_range(int64_t lo, int64_t hi, const T* __restrict X, uint64_t seed,
                                                 int64_t step, int64_t first, double rate, T scale,
                                                 T* __restrict Y) {
  for_dropout_decisions(lo, hi, first, seed, step, rate,
                        [&](int64_t i, bool keep) __attribute__((always_inline)) { Y[i] = keep ? X[i] * scale : T(0); });
}

// dX = dY * keep / (1 - rate) * x_act'(X), the forward pass's mask drawn again.
template <Activation XK, typename T>
FASTMLP_VECTOR_CLONES void dropout_backward_range(int64_t lo, int64_t hi, const T* X, const T* dY, uint64_t seed,
                                                  int64_t step, int64_t first, double rate, T scale, T x_param,
                                                  T* dX) {
  for_dropout_decisions(lo, hi, first, seed, step, rate, [&](int64_t i, bool keep) __attribute__((always_inline)) {
    dX[i] = keep ? dY[i] * scale * math::activation_grad_from_output(XK, x_param, X[i]) : T(0);
  });
}

// out[j] = sum over rows of M[i, j] for the columns [j0, j1) of one band (at most 64 wide).
template <typename T>
FASTMLP_VECTOR_CLONES void column_sums_band(int rows, int cols, const T* __restrict M, int j0, int j1,
                                            T* __restrict out) {
  T acc[64] = {};
  for (int i = 0; i < rows; ++i) {
    const T* row = M + int64_t(i) * cols;
#pragma omp simd
    for (int j = j0; j < j1; ++j) acc[j - j0] += row[j];
  }
  for (int j = j0; j < j1; ++j) out[j] = acc[j - j0];
}

// Loss rows [lo, hi) (math::loss_row; dZ may be null): the weighted loss sum and the metric sum.
// One copy per vector width, so the rows' exp, max and sum loops vectorize.
template <typename T>
FASTMLP_VECTOR_CLONES std::pair<double, double> loss_rows(int64_t lo, int64_t hi, int n_out, const T* Z, const T* Y,
                                                          int y_cols, bool weighted, Loss loss, T loss_param,
                                                          Metric metric, ActivationSpec out_act, T scale, T* dZ) {
  std::pair<double, double> sums{0.0, 0.0};
  for (int64_t i = lo; i < hi; ++i) {
    const T w = math::row_weight(Y + i * y_cols, y_cols, weighted);
    const auto r = math::loss_row(loss, loss_param, metric, out_act, n_out, Z + i * n_out, Y + i * y_cols, scale * w,
                                  dZ ? dZ + i * n_out : nullptr);
    sums.first += double(w) * r.loss;
    sums.second += r.metric;
  }
  return sums;
}

// Z[i, :] = the model's output of logits row i, in place, for rows [lo, hi) (math::output_value).
template <Activation K, typename T>
FASTMLP_VECTOR_CLONES void output_rows(int64_t lo, int64_t hi, int n_out, T param, T* Z) {
  for (int64_t i = lo; i < hi; ++i) {
    T* z = Z + i * n_out;
    if constexpr (K == Activation::Softmax) {
      const T lse = math::row_logsumexp(n_out, z);
#pragma omp simd
      for (int j = 0; j < n_out; ++j) z[j] = math::exp(z[j] - lse);
    } else {
#pragma omp simd
      for (int j = 0; j < n_out; ++j) z[j] = math::activate(K, param, z[j]);
    }
  }
}

}  // namespace
}  // namespace fastmlp::cpu
