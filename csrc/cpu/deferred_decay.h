// Batch-1 plain SGD with an L2 regularizer: the first kernel's decay deferred for the rows whose
// input is zero.
//
// With L2, a plain SGD step scales every weight by c = 1 - 2 lr l2 (math::l2_sgd_decay_factor)
// and moves it by -lr x[i] dz[j]; a kernel row whose input x[i] is zero is only scaled. About 80%
// of an MNIST digit's pixels are zero, so the eager update moved five times the weights that the
// data gradient touches, and L2 cost 2.01x the plain step at batch 1 (docs/performance.md).
//
// Here row i's weights are stored[i] * A * inv_scale[i]: A is the product of the steps' factors
// since tracking began, inv_scale[i] is 1 / A at the row's last write. The forward pass
// multiplies the stored kernel with x[i] times row i's factor (scaled_input); the update applies
// the factor of the rows it moves (those of nonzero inputs) as it reads them; all rows are
// written when the engine ends an epoch or lets others read the weights (settle_all, expose), and
// when A gets so small that 1 / A^2 could overflow. The penalty l2 sum(w^2) of each step is
// l2 A^2 Q, Q the sum over rows of the stored row's squares times inv_scale[i]^2, so only the
// updated rows change it.
//
// Not bit for bit the eager update: a pending row gets one multiply by a product of factors where
// the eager update rounds once per step. Rows with a nonzero input get the eager formula
// (math::guarded_update) from the same values.
//
// Included by optimizer_step.h only (internal linkage).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "cpu/nonzero.h"
#include "cpu/thread_pool.h"
#include "cpu/vector_clones.h"
#include "fastmlp/backend.h"
#include "fastmlp/math.h"
#include "fastmlp/types.h"

namespace fastmlp::cpu {
namespace {

template <typename T>
class DeferredDecay {
 public:
  // Whether the kernel at this offset has decay pending (exposed or not).
  bool tracks(int64_t offset) const { return active_ && offset_ == offset; }

  // The input row a one-row forward pass multiplies with the stored kernel: x[i] times row i's
  // pending factor, so the product is the one the applied weights give without writing them (the
  // update applies the factor of the rows it moves in the same pass). x itself when nothing is
  // deferred.
  const T* scaled_input(T* params, const T* x) {
    resume(params);
    if (!active_) return x;
    scaled_x_.resize(size_t(in_));
    scale_input(x, in_, scale_, inv_scale_.data(), scaled_x_.data());
    return scaled_x_.data();
  }

  // Applies every pending factor and stops deferring.
  void settle_all(T* params) {
    if (active_ && !exposed_) {
      T* kernel = params + offset_;
      for (int i = 0; i < in_; ++i) scale_row(kernel + int64_t(i) * out_, factor(i));
    }
    active_ = exposed_ = false;
  }

  // Leaves the weights the steps made in params for others to read between two steps, and
  // keeps what the next step needs to go on as if nothing had happened (resume). Applying the
  // factors early would round the rows differently, so a fit's result would depend on when
  // another thread read the model, or on when the engine polled for signals.
  void expose(T* params) {
    if (!active_ || exposed_) return;
    T* kernel = params + offset_;
    saved_.assign(kernel, kernel + int64_t(in_) * out_);
    for (int i = 0; i < in_; ++i) scale_row(kernel + int64_t(i) * out_, factor(i));
    exposed_ = true;
  }

  // Whether this step may defer, for a plain SGD step with L2 alone whose zero inputs give zero
  // gradients (the caller checks those): a deferrable kernel and a factor in (0, 1] (a larger
  // rate flips or grows the weights: left to the eager update). It starts
  // only at an input with zeros enough (kSparseRowZeros): with few, the row bookkeeping cost more
  // than the decay it saves (784-100-10 on uniform random rows: 1.23x the eager step), and
  // once started it goes on to the end of the epoch (stopping writes every row).
  bool applies(const math::StepScalars& s, const KernelGradient<T>& kg, double l2) const {
    if (!kg.deferrable) return false;
    const double c = math::l2_sgd_decay_factor(s.lr, l2);
    if (!(c > 0.0 && c <= 1.0)) return false;
    if (tracks(kg.offset)) return true;
    int zeros = 0;
    for (int i = 0; i < kg.in; ++i) zeros += kg.x[i] == T(0);
    return zeros >= kSparseRowZeros * kg.in;
  }

  // One step of plain SGD with L2 over kernel kg (applies() was true): the rows with a nonzero
  // input are updated eagerly, the others' factor joins A. Returns the penalty of the weights
  // before the step and whether an update overflowed (that weight keeps its value, as in the
  // eager update).
  std::pair<double, int> step(const OptimizerConfig& cfg, const math::StepScalars& s, const KernelGradient<T>& kg,
                              T* params, double l2) {
    resume(params);
    if (!tracks(kg.offset)) {
      settle_all(params);
      begin(kg, params);
    }
    const double penalty = l2 * scale_ * scale_ * q_sum_;
    const double next_scale = scale_ * math::l2_sgd_decay_factor(s.lr, l2);
    const double inv_next = 1.0 / next_scale;
    using Result = std::pair<double, int>;  // the change of Q, overflowed
    // The rows of nonzero inputs (about 20% of a digit's pixels).
    nonzero_.resize(size_t(in_));
    const int count = list_nonzero(kg.x, in_, nonzero_.data());
    const int* rows = nonzero_.data();
    // Bands of rows, the bands of the forward product's split (thread_pool.h's split_in_bands).
    const Result r = parallel_reduce(
        int64_t(in_), split_in_bands(int64_t(in_) * out_), Result{0.0, 0},
        [&](int64_t lo, int64_t hi) {
          const int* first = std::lower_bound(rows, rows + count, int(lo));
          const int* last = std::lower_bound(first, rows + count, int(hi));
          Result band{0.0, 0};
          band.first = update_rows(cfg, s, first, int(last - first), kg.x, kg.dz, T(l2), out_, params + offset_,
                                   scale_, inv_next, inv_scale_.data(), q_.data(), band.second);
          return band;
        },
        [](Result a, Result b) { return Result{a.first + b.first, a.second | b.second}; });
    q_sum_ += r.first;
    scale_ = next_scale;
    // Q holds squares times 1 / A^2: settled long before that could overflow a double.
    if (scale_ < kSmallestScale) settle_all(params);
    return {penalty, r.second};
  }

 private:
  static constexpr double kSmallestScale = 1e-30;

  void begin(const KernelGradient<T>& kg, const T* params) {
    offset_ = kg.offset;
    in_ = kg.in;
    out_ = kg.out;
    scale_ = 1.0;
    inv_scale_.assign(size_t(in_), 1.0);
    q_.assign(size_t(in_), 0.0);
    q_sum_ = 0.0;
    for (int i = 0; i < in_; ++i) {
      const T* row = params + offset_ + int64_t(i) * out_;
      double squares = 0.0;
      for (int j = 0; j < out_; ++j) squares += double(row[j]) * double(row[j]);
      q_[size_t(i)] = squares;
      q_sum_ += squares;
    }
    active_ = true;
  }

  // After expose: the stored rows come back when params still hold exactly what expose left
  // (nobody wrote them meanwhile), else params are taken as they are and deferring starts anew.
  void resume(T* params) {
    if (!exposed_) return;
    exposed_ = false;
    T* kernel = params + offset_;
    bool unchanged = true;
    for (int i = 0; i < in_ && unchanged; ++i) {
      const T f = factor(i);
      const T* saved = saved_.data() + int64_t(i) * out_;
      const T* row = kernel + int64_t(i) * out_;
      for (int j = 0; j < out_; ++j) unchanged = unchanged && row[j] == (f == T(1) ? saved[j] : saved[j] * f);
    }
    if (unchanged)
      std::copy(saved_.begin(), saved_.end(), kernel);
    else
      active_ = false;
  }

  T factor(int i) const { return T(scale_ * inv_scale_[size_t(i)]); }  // row i's pending factor

  // out[i] = x[i] times row i's pending factor (factor()'s arithmetic), vectorized.
  FASTMLP_VECTOR_CLONES static void scale_input(const T* __restrict x, int n, double scale,
                                                const double* __restrict inv_scale, T* __restrict out) {
#pragma omp simd
    for (int i = 0; i < n; ++i) out[i] = x[i] * T(scale * inv_scale[i]);
  }

  void scale_row(T* row, T factor) const {
    if (factor != T(1)) scale(row, out_, factor);
  }
  FASTMLP_VECTOR_CLONES static void scale(T* __restrict row, int n, T factor) {
#pragma omp simd
    for (int j = 0; j < n; ++j) row[j] *= factor;
  }

  // For each listed row i: w = f row (f its pending factor), then row = w - lr (x[i] dz + 2 l2 w),
  // each weight through math::guarded_update with the plain SGD configuration; the row's term of
  // Q becomes its squares times inv_next^2. Returns the change of Q.
  FASTMLP_VECTOR_CLONES static double update_rows(const OptimizerConfig& cfg, const math::StepScalars& s,
                                                  const int* rows, int count, const T* x, const T* __restrict dz,
                                                  T l2, int out, T* kernel, double scale, double inv_next,
                                                  double* inv_scale, double* q, int& overflowed) {
    OptimizerConfig c = cfg;  // constants, so the shared update inlines to branch-free code
    c.kind = OptimizerKind::SGD;
    c.momentum = 0.0;
    c.weight_decay = 0.0;
    double change = 0.0;
    T bad = T(0);  // a float sum, like the squares: an int flag's reduction went through the stack
    for (int t = 0; t < count; ++t) {
      const int i = rows[t];
      const T xi = x[i], f = T(scale * inv_scale[i]);
      T* __restrict row = kernel + int64_t(i) * out;
      T squares = T(0);
#pragma omp simd reduction(+ : bad, squares)
      for (int j = 0; j < out; ++j) {
        T p = row[j] * f;  // exact when f is 1
        const T g = xi * dz[j] + math::l2_regularization_grad(p, l2);
        T unused0 = T(0), unused1 = T(0), unused2 = T(0);
        bad += math::guarded_update(c, s, p, g, unused0, unused1, unused2) ? T(0) : T(1);
        row[j] = p;
        squares += p * p;
      }
      const double term = double(squares) * inv_next * inv_next;
      change += term - q[i];
      q[i] = term;
      inv_scale[i] = inv_next;
    }
    if (bad != T(0)) overflowed = 1;
    return change;
  }

  bool active_ = false;
  bool exposed_ = false;  // params hold the applied weights, saved_ the stored ones (expose)
  std::vector<T> saved_;
  std::vector<T> scaled_x_;  // scaled_input's row
  std::vector<int> nonzero_;  // step's rows of nonzero inputs
  int64_t offset_ = 0;
  int in_ = 0, out_ = 0;
  double scale_ = 1.0;              // A
  std::vector<double> inv_scale_;   // per row: 1 / A at its last write
  std::vector<double> q_;           // per row: its stored squares times inv_scale^2
  double q_sum_ = 0.0;              // Q
};

}  // namespace
}  // namespace fastmlp::cpu
