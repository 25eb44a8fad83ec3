// Batch-1 plain SGD with an L2 regularizer: the first kernel's decay kept as one scale factor.
//
// With L2, a plain SGD step scales every weight by c = 1 - 2 lr l2 (math::l2_sgd_decay_factor)
// and moves it by -lr x[i] dz[j]; a kernel row whose input x[i] is zero is only scaled. About 80%
// of an MNIST digit's pixels are zero, so the eager update moved five times the weights that the
// data gradient touches, and L2 cost 2.01x the plain step at batch 1 (docs/performance.md).
//
// Here the kernel is W = s V: s (a double) is the product of the steps' factors since tracking
// began and V the stored kernel. A step multiplies s by c and moves V by the plain SGD update
// with the rate lr / s' (s' the new s), which skips the rows of zero inputs
// (OptimizerStep::update_formed_range): s' (V - lr / s' x dz) = c W - lr x dz, the eager step.
// The forward pass multiplies V with s x (scaled_input). Each step's penalty is l2 s^2 Q with
// Q = |V|^2; Q follows the step from the forward pass's product s x^T V (note_product) through
// math::squares_after_rank_one_step, so keeping it costs no pass over the weights; it is counted
// again from V every kRecountSteps steps, so rounding cannot pile up, and after any step without
// the product or with an overflow. W is written out (V scaled by s) when the engine ends an epoch
// or lets others read the weights (settle_all, expose), and before s would fall below 1e-6.
//
// An earlier version kept a factor per row and rewrote each moved row with the eager formula,
// summing its squares: 1.32x the plain step on MNIST at batch 1, against 1.03-1.05x for this one
// (docs/performance.md, sixteenth session). Not bit for bit the eager update either way: a weight
// rounds as s' times V (in double, rounded once). A weight whose update overflows keeps its V, so
// it still decays (the eager update keeps it whole); either way the step is flagged non-finite.
//
// Included by optimizer_step.h only (internal linkage).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/nonzero.h"
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

  // The input row a one-row forward pass multiplies with the stored kernel: s x, so the product
  // is the one the applied weights give without writing them. x itself when nothing is deferred.
  // The pass's product then comes to note_product.
  const T* scaled_input(T* params, const T* x) {
    resume(params);
    awaiting_product_ = product_valid_ = false;
    if (!active_) return x;
    kernel_ = params + offset_;
    scaled_x_.resize(size_t(in_));
    scale_input(x, in_, scale_, scaled_x_.data());
    awaiting_product_ = true;
    return scaled_x_.data();
  }

  // A one-row forward product of kernel with scaled_input's row, before its bias: kept for the
  // step's Q when it is the tracked kernel's, in the same training step.
  void note_product(const T* kernel, const T* product, int out) {
    if (!awaiting_product_ || kernel != kernel_ || out != out_) return;
    product_.assign(product, product + out);
    awaiting_product_ = false;
    product_valid_ = true;
  }

  // Applies the pending scale and stops deferring.
  void settle_all(T* params) {
    if (active_ && !exposed_) scale_kernel(params + offset_, int64_t(in_) * out_, scale_);
    active_ = exposed_ = awaiting_product_ = product_valid_ = false;
  }

  // Leaves the weights the steps made in params for others to read between two steps, and
  // keeps what the next step needs to go on as if nothing had happened (resume). Applying the
  // scale early would round the weights differently, so a fit's result would depend on when
  // another thread read the model, or on when the engine polled for signals.
  void expose(T* params) {
    if (!active_ || exposed_) return;
    T* kernel = params + offset_;
    saved_.assign(kernel, kernel + int64_t(in_) * out_);
    scale_kernel(kernel, int64_t(in_) * out_, scale_);
    exposed_ = true;
  }

  // Whether this step may defer, for a plain SGD step with L2 alone whose zero inputs give zero
  // gradients (the caller checks those): a deferrable kernel and a factor in [kSmallestScale, 1]
  // (a larger rate flips or grows the weights: left to the eager update). It starts only at an input with
  // zeros enough (kSparseRowZeros): with few, deferring saves little (the update moves most rows
  // anyway), and once started it goes on to the end of the epoch (stopping writes every weight).
  bool applies(const math::StepScalars& s, const KernelGradient<T>& kg, double l2) const {
    if (!kg.deferrable) return false;
    const double c = math::l2_sgd_decay_factor(s.lr, l2);
    if (!(c >= kSmallestScale && c <= 1.0)) return false;
    if (tracks(kg.offset)) return true;
    int zeros = 0;
    for (int i = 0; i < kg.in; ++i) zeros += kg.x[i] == T(0);
    return zeros >= kSparseRowZeros * kg.in;
  }

  // Starts one step of plain SGD with L2 over kernel kg (applies() was true). Returns the step
  // scalars with which the caller runs the plain SGD update without regularizer over the stored
  // kernel (it skips the rows of zero inputs), and sets penalty to that of the weights before
  // the step. end_step follows.
  math::StepScalars begin_step(const math::StepScalars& s, const KernelGradient<T>& kg, T* params, double l2,
                               double& penalty) {
    resume(params);
    const double c = math::l2_sgd_decay_factor(s.lr, l2);
    // V grows as 1 / s and the forward pass's input shrinks as s: W is written out before s
    // falls below kSmallestScale, so neither can leave float's range while W and x are in it.
    if (!tracks(kg.offset) || scale_ * c < kSmallestScale) {
      settle_all(params);
      begin(kg, params);
    }
    penalty = l2 * scale_ * scale_ * q_;
    next_scale_ = scale_ * c;
    math::StepScalars stored = s;
    stored.lr = s.lr / next_scale_;
    next_q_ = -1.0;  // unknown: counted again in end_step
    if (product_valid_ && ++steps_since_count_ < kRecountSteps) {
      // The product is (s x)^T V; x^T V . dz = product . dz / s.
      const double product_dz = dot(product_.data(), kg.dz, out_);
      // The rate as the update rounds it (T), so that the identity follows the same step.
      next_q_ = math::squares_after_rank_one_step(q_, double(T(stored.lr)), product_dz / scale_,
                                                  dot(kg.x, kg.x, in_), dot(kg.dz, kg.dz, out_));
    }
    product_valid_ = awaiting_product_ = false;
    return stored;
  }

  // Ends the step begin_step started, after the caller's update of the stored kernel (overflowed:
  // some weight kept its value, so Q is counted again).
  void end_step(T* params, bool overflowed) {
    scale_ = next_scale_;
    if (overflowed || !(next_q_ >= 0.0)) {
      q_ = squares(params + offset_, int64_t(in_) * out_);
      steps_since_count_ = 0;
    } else {
      q_ = next_q_;
    }
  }

 private:
  static constexpr double kSmallestScale = 1e-6;  // at 1 - 2 lr l2 = 0.99998, 690,000 steps
  static constexpr int kRecountSteps = 4096;

  void begin(const KernelGradient<T>& kg, const T* params) {
    offset_ = kg.offset;
    in_ = kg.in;
    out_ = kg.out;
    scale_ = 1.0;
    q_ = squares(params + offset_, int64_t(in_) * out_);
    steps_since_count_ = 0;
    active_ = true;
  }

  // After expose: the stored kernel comes back when params still hold exactly what expose left
  // (nobody wrote them meanwhile), else params are taken as they are and deferring starts anew.
  void resume(T* params) {
    if (!exposed_) return;
    exposed_ = false;
    T* kernel = params + offset_;
    bool unchanged = true;
    for (int64_t k = 0; k < int64_t(in_) * out_ && unchanged; ++k)
      unchanged = kernel[k] == (scale_ == 1.0 ? saved_[size_t(k)] : scaled(saved_[size_t(k)], scale_));
    if (unchanged)
      std::copy(saved_.begin(), saved_.end(), kernel);
    else
      active_ = false;
  }

  static double squares(const T* w, int64_t n) { return dot(w, w, n); }  // Q counted from the weights

  // The sum of a[k] b[k] in double, in 16 lanes added in order at the end: one running sum
  // waited on each add (the 784 inputs' squares took 2% of a batch-1 MNIST step so).
  FASTMLP_VECTOR_CLONES static double dot(const T* __restrict a, const T* __restrict b, int64_t n) {
    constexpr int kLanes = 16;
    double lanes[kLanes] = {};
    int64_t k = 0;
    for (; k + kLanes <= n; k += kLanes) {
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) lanes[l] += double(a[k + l]) * double(b[k + l]);
    }
    double sum = 0.0;
    for (int l = 0; l < kLanes; ++l) sum += lanes[l];
    for (; k < n; ++k) sum += double(a[k]) * double(b[k]);
    return sum;
  }

  // v times the double scale, rounded once (T(s) would add a rounding, the same for every weight).
  static T scaled(T v, double scale) { return T(double(v) * scale); }

  FASTMLP_VECTOR_CLONES static void scale_input(const T* __restrict x, int n, double scale, T* __restrict out) {
#pragma omp simd
    for (int i = 0; i < n; ++i) out[i] = scaled(x[i], scale);
  }

  FASTMLP_VECTOR_CLONES static void scale_kernel(T* __restrict w, int64_t n, double scale) {
    if (scale == 1.0) return;
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) w[k] = scaled(w[k], scale);
  }

  bool active_ = false;
  bool exposed_ = false;            // params hold the applied weights, saved_ the stored ones (expose)
  bool awaiting_product_ = false;   // scaled_input ran; the forward pass's product not yet noted
  bool product_valid_ = false;      // product_ is this step's
  std::vector<T> saved_;
  std::vector<T> scaled_x_;  // scaled_input's row
  std::vector<T> product_;   // the forward pass's (s x)^T V
  const T* kernel_ = nullptr;
  int64_t offset_ = 0;
  int in_ = 0, out_ = 0;
  double scale_ = 1.0, next_scale_ = 1.0;  // s, and s' during a step
  double q_ = 0.0, next_q_ = 0.0;          // |V|^2, and after the step (negative: to be counted)
  int steps_since_count_ = 0;
};

}  // namespace
}  // namespace fastmlp::cpu
