// The CPU backend's optimizer step: one fused, vectorized pass over the flat parameters that
// adds each segment's regularizer, clips, and applies math::optimizer_update; before it, when
// the config needs them (optimizer_norm_passes), passes that reduce per-segment norms for norm
// clipping and LAMB's trust ratio.
//
// Included by cpu_backend.cpp only (internal linkage).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/deferred_decay.h"
#include "cpu/thread_pool.h"
#include "cpu/vector_clones.h"
#include "fastmlp/backend.h"
#include "fastmlp/math.h"
#include "fastmlp/types.h"

namespace fastmlp::cpu {
namespace {

template <typename F>
void with_bool(bool b, F&& f) {
  if (b) return f(std::true_type{});
  return f(std::false_type{});
}

// Calls f(std::integral_constant<OptimizerKind, k>) for the runtime kind k (types.h's list).
template <typename F>
void with_optimizer(OptimizerKind k, F&& f) {
  switch (k) {
#define FASTMLP_OPTIMIZER_CASE(name, python_name) \
  case OptimizerKind::name: return f(std::integral_constant<OptimizerKind, OptimizerKind::name>{});
    FASTMLP_OPTIMIZERS(FASTMLP_OPTIMIZER_CASE)
#undef FASTMLP_OPTIMIZER_CASE
  }
}

enum class Regularizer { None, L2, L1L2 };  // L2 alone skips sign(w)

template <typename T>
class OptimizerStep {
 public:
  // Compile-time choices of one variant: the kind and the flags its update branches on.
  template <OptimizerKind K, bool kAmsgrad, bool kDecay, bool kMomentum, bool kCentered, bool kClip>
  struct Flags {
    static constexpr OptimizerKind kind = K;
    static constexpr bool amsgrad = kAmsgrad, decay = kDecay, momentum = kMomentum, centered = kCentered,
                          clip = kClip;
    static constexpr int slots = optimizer_state_slots(K, kMomentum, kCentered, kAmsgrad);
  };

  // The whole step (Backend::optimizer_step's contract) over host memory.
  // segment_norms: the norm scratch when the config needs it (Backend::optimizer_step), else null.
  // kernel_grads: segments whose gradient is formed here from x and dz (Backend::optimizer_step).
  // deferred: the backend's deferred decay, used for a deferrable kernel when the step allows.
  static void run(int64_t n_params, T* params, const T* grads, T* state, int slots, const ParamSegment* segments,
                  int n_segments, bool any_regularizer, const OptimizerConfig& cfg, double* segment_norms,
                  TrainCounters* counters, int rows, const KernelGradient<T>* kernel_grads, int n_kernel_grads,
                  DeferredDecay<T>* deferred) {
    if (counters->nonfinite) {  // keep the last good weights; the epoch still walks its batches
      counters->batch_start += rows;
      return;
    }
    const math::StepScalars s = math::step_scalars(cfg, counters->step, counters->mu_product);
    // Slots the optimizer does not own are null: update_range never touches them, so no two
    // pointers alias (they are __restrict there).
    T* st0 = slots > 0 ? state : nullptr;
    T* st1 = slots > 1 ? state + n_params : nullptr;
    T* st2 = slots > 2 ? state + 2 * n_params : nullptr;
    // The norm passes read every gradient before the update, so those must all be in grads.
    if (segment_norms && n_kernel_grads)
      throw std::logic_error("kernel gradients formed in the step cannot be combined with norm passes");
    if (segment_norms) reduce_norms(cfg, s, params, grads, st0, st1, segments, n_segments, segment_norms);
    double penalty = 0.0;
    int overflowed = 0;
    const bool clip = cfg.clipvalue > 0.0 || cfg.clipnorm > 0.0 || cfg.global_clipnorm > 0.0;
    // Only the flags a kind reads become compile-time constants (amsgrad for Adam, centered for
    // RMSprop, momentum for SGD and RMSprop), so few variants compile.
    with_optimizer(cfg.kind, [&](auto kind) {
      constexpr OptimizerKind K = std::decay_t<decltype(kind)>::value;
      constexpr bool adam = K == OptimizerKind::Adam || K == OptimizerKind::AdamW;
      constexpr bool rms = K == OptimizerKind::RMSprop;
      constexpr bool has_momentum = K == OptimizerKind::SGD || rms;
      with_bool(adam && cfg.amsgrad, [&](auto amsgrad) {
        with_bool(rms && cfg.centered, [&](auto centered) {
          with_bool(has_momentum && cfg.momentum != 0.0, [&](auto momentum) {
            with_bool(cfg.weight_decay != 0.0, [&](auto decay) {
              with_bool(clip, [&](auto clipped) {
                if constexpr ((adam || !std::decay_t<decltype(amsgrad)>::value) && (rms || !std::decay_t<decltype(centered)>::value) &&
                              (has_momentum || !std::decay_t<decltype(momentum)>::value)) {
                  // not K: GCC 13 refuses a constexpr local of an enclosing lambda as a template argument
                  using F = Flags<std::decay_t<decltype(kind)>::value, std::decay_t<decltype(amsgrad)>::value, std::decay_t<decltype(decay)>::value, std::decay_t<decltype(momentum)>::value,
                                  std::decay_t<decltype(centered)>::value, std::decay_t<decltype(clipped)>::value>;
                  if (F::slots != slots)  // the engine sized the state with optimizer_state_slots
                    throw std::logic_error("optimizer state has " + std::to_string(slots) +
                                           " slots, the update uses " + std::to_string(F::slots));
                  const auto r = update_segments<F>(cfg, s, params, grads, st0, st1, st2, segments, n_segments,
                                                    segment_norms, kernel_grads, n_kernel_grads, deferred);
                  penalty += r.first;
                  overflowed |= r.second;
                }
              });
            });
          });
        });
      });
    });
    if (any_regularizer) counters->reg_sum += penalty * rows;
    if (overflowed) counters->nonfinite = 1;  // later steps are skipped; the weights stay finite
    counters->step += 1;
    counters->mu_product *= s.mu;  // NAdam's running product (unused by the others)
    counters->batch_start += rows;
  }

 private:
  // The penalty is summed in T within blocks of this many elements and in double across blocks
  // (a double sum per element halved the vector width: at batch 1 the L2 step cost 1.9x the
  // plain one). Each block ends in a sequential sum of the vector's lanes, so blocks are long:
  // 4096 took batch-1 SGD with L2 from 24.0 to 22.8 us per row (plain: 19.0); several partial
  // sums, or a separate penalty pass, measured slower.
  static constexpr int64_t kPenaltyBlock = 4096;

  // The gradient of the loss plus the segment's regularizer, before clipping.
  static T regularized(T g, T p, T l1, T l2) { return g + math::regularization_grad(p, l1, l2); }

  // The norm scratch's sums (math::segment_scale reads them): the regularized gradients' squares
  // for norm clipping, then, for LAMB, the parameters' and the clipped direction's. In double,
  // each thread's piece in order and the pieces in order (the split follows the thread count).
  static void reduce_norms(const OptimizerConfig& cfg, const math::StepScalars& s, const T* params, const T* grads,
                           const T* st0, const T* st1, const ParamSegment* segments, int n_segments,
                           double* norms) {
    for (int i = 0; i < kSegmentNormSlots * n_segments + 1; ++i) norms[i] = 0.0;
    auto sum = [&](const ParamSegment& seg, auto&& term) {
      return cpu::parallel_reduce(
          seg.size, parallel_pass(seg.size), 0.0,
          [&](int64_t from, int64_t to) {
            double acc = 0.0;
            for (int64_t k = seg.offset + from; k < seg.offset + to; ++k) acc += term(k);
            return acc;
          },
          [](double a, double b) { return a + b; });
    };
    double& global = norms[kSegmentNormSlots * n_segments];
    if (cfg.clipnorm > 0.0 || cfg.global_clipnorm > 0.0) {
      for (int i = 0; i < n_segments; ++i) {
        const ParamSegment& seg = segments[i];
        if (seg.moving_average) continue;  // not trained
        const T l1 = T(seg.l1), l2 = T(seg.l2);
        norms[i] = sum(seg, [&](int64_t k) {
          const double g = double(regularized(grads[k], params[k], l1, l2));
          return g * g;
        });
        global += norms[i];
      }
    }
    if (cfg.kind == OptimizerKind::LAMB) {
      for (int i = 0; i < n_segments; ++i) {
        const ParamSegment& seg = segments[i];
        if (seg.moving_average) continue;
        const T l1 = T(seg.l1), l2 = T(seg.l2);
        const T grad_scale = T(math::segment_scale(cfg, norms, n_segments, i).grad);
        norms[n_segments + i] = sum(seg, [&](int64_t k) { return double(params[k]) * double(params[k]); });
        norms[2 * n_segments + i] = sum(seg, [&](int64_t k) {
          // The moments as this step's update will leave them (the same formula, not stored).
          const T g = math::clipped_gradient(cfg, regularized(grads[k], params[k], l1, l2), grad_scale);
          const T m = T(cfg.beta1) * st0[k] + T(1.0 - cfg.beta1) * g;
          const T v = T(cfg.beta2) * st1[k] + T(1.0 - cfg.beta2) * g * g;
          const double r = double(math::lamb_direction(cfg, s, params[k], m, v));
          return r * r;
        });
      }
    }
  }

  // One optimizer variant over every segment: returns the penalty and whether an update overflowed.
  template <typename F>
  static std::pair<double, int> update_segments(const OptimizerConfig& cfg, const math::StepScalars& s, T* params,
                                                const T* grads, T* st0, T* st1, T* st2,
                                                const ParamSegment* segments, int n_segments,
                                                const double* segment_norms, const KernelGradient<T>* kernel_grads,
                                                int n_kernel_grads, DeferredDecay<T>* deferred) {
    using Result = std::pair<double, int>;  // penalty, overflowed
    Result total{0.0, 0};
    for (int sgi = 0; sgi < n_segments; ++sgi) {
      const ParamSegment seg = segments[sgi];
      if (seg.moving_average) {  // not trained: the statistic in grads is averaged in
        for (int64_t k = seg.offset; k < seg.offset + seg.size; ++k) {
          const T next = math::moving_average(params[k], grads[k], seg.momentum);
          if (std::isfinite(next)) params[k] = next;
        }
        continue;
      }
      const math::SegmentScale scale = math::segment_scale(cfg, segment_norms, n_segments, sgi);
      const T grad_scale = T(scale.grad), trust = T(scale.trust);
      const KernelGradient<T>* formed = nullptr;
      for (int i = 0; i < n_kernel_grads; ++i)
        if (kernel_grads[i].offset == seg.offset) formed = &kernel_grads[i];
      if (formed && int64_t(formed->in) * formed->out != seg.size)
        throw std::logic_error("a formed kernel gradient does not match its segment's size");
      // With the L2 decay deferred, the stored kernel takes a plain SGD step of a scaled rate
      // and no regularizer (deferred_decay.h), which skips the rows of zero inputs.
      math::StepScalars seg_s = s;
      bool deferring = false;
      double deferred_penalty = 0.0;
      if (formed && deferred) {
        if constexpr (kPlainSgd<F>) {
          if (seg.l1 == 0.0 && seg.l2 != 0.0 && zero_inputs_give_zero_gradients(s, *formed) &&
              deferred->applies(s, *formed, seg.l2)) {
            seg_s = deferred->begin_step(s, *formed, params, seg.l2, deferred_penalty);
            deferring = true;
          }
        }
        if (!deferring && deferred->tracks(seg.offset)) deferred->settle_all(params);  // updated eagerly below
      }
      // Each thread updates one contiguous chunk with a plain loop; penalties add up in order.
      // A kernel's chunks are bands of its rows (split_in_bands), the bands in which blas.cpp
      // splits a small batch's forward product and a tall kernel's gradient, so each thread
      // updates weights still in its own cache. Split at 2^15 while the forward pass ran on one
      // thread, the update was slower than unsplit at batch 1, 16 and 100 (the chunks moved
      // between the cores).
      const Result r = cpu::parallel_reduce(
          seg.size, split_in_bands(seg.size), Result{0.0, 0},
          [&](int64_t from, int64_t to) {
            int bad = 0;
            const int64_t lo = seg.offset + from, hi = seg.offset + to;
            const T l1 = T(seg.l1), l2 = T(seg.l2);
            auto update = [&](auto reg) {
              constexpr Regularizer kReg = decltype(reg)::value;
              if (formed)
                return update_formed_range<F, kReg>(cfg, seg_s, *formed, params, st0, st1, st2, lo, hi, l1, l2,
                                                    grad_scale, trust, bad);
              return update_range<F, kReg>(cfg, seg_s, params, grads, st0, st1, st2, lo, hi, l1, l2, grad_scale,
                                           trust, bad);
            };
            double pen = 0.0;
            if (deferring)
              pen = update(std::integral_constant<Regularizer, Regularizer::None>{});
            else if (seg.l1 != 0.0)
              pen = update(std::integral_constant<Regularizer, Regularizer::L1L2>{});
            else if (seg.l2 != 0.0)
              pen = update(std::integral_constant<Regularizer, Regularizer::L2>{});
            else
              pen = update(std::integral_constant<Regularizer, Regularizer::None>{});
            return Result{pen, bad};
          },
          [](Result a, Result b) { return Result{a.first + b.first, a.second | b.second}; });
      if (deferring) deferred->end_step(params, r.second != 0);
      total.first += r.first + deferred_penalty;
      total.second |= r.second;
    }
    return total;
  }

  // update_range over a kernel whose gradient is formed here (KernelGradient): block by block,
  // the block's gradients x[i] * dz[j] are written to a buffer that stays in L1, and the block is
  // updated from it. Blocks match update_range's, so the penalty adds up in the same order.
  // Each kernel row is written in whole groups of kGroup columns (one AVX-512 vector of floats):
  // the few past the row's end are overwritten by the next row or land in the buffer's slack,
  // and are read from a copy of dz with kGroup columns of padding. A remainder loop per row
  // doubled the cost of forming (rows of 100 columns).
  static constexpr int64_t kGroup = 16;

  // dst[0, n) = xi * dz[0, n), in whole groups (up to kGroup - 1 values past n are written).
  static inline __attribute__((always_inline)) void form_row_part(T xi, const T* __restrict dz, int64_t n,
                                                                  T* __restrict dst) {
    for (int64_t jg = 0; jg < n; jg += kGroup) {
#pragma omp simd
      for (int64_t j = jg; j < jg + kGroup; ++j) dst[j] = xi * dz[j];
    }
  }

  // Plain SGD (no momentum, weight decay, regularizer or clipping) moves a weight by lr * g, so a
  // kernel row whose input x[i] is zero (g = 0 * dz = 0 while dz and lr are finite) stays exactly
  // as it is, and update_formed_range skips it. Most inputs of a one-row batch of pixels are zero
  // (about 80% of an MNIST digit's), the per-example SGD of the lectures.
  // Plain SGD: a weight moves by lr * (g + its regularizer's gradient) and by nothing else. With
  // no regularizer a zero-input row stays (kZeroRowsStay); with L2 alone every weight shrinks by
  // the same factor, which DeferredDecay keeps as one scale of the kernel.
  template <typename F>
  static constexpr bool kPlainSgd = F::kind == OptimizerKind::SGD && !F::momentum && !F::decay && !F::clip;
  template <typename F, Regularizer kReg>
  static constexpr bool kZeroRowsStay = kPlainSgd<F> && kReg == Regularizer::None;

  // Whether a kernel row whose input is zero gets a zero gradient x[i] * dz = 0 this step: dz and
  // the learning rate finite (else 0 * dz is not 0, and the update flags the overflow).
  static bool zero_inputs_give_zero_gradients(const math::StepScalars& s, const KernelGradient<T>& kg) {
    if (!std::isfinite(T(s.lr))) return false;
    for (int j = 0; j < kg.out; ++j)
      if (!std::isfinite(kg.dz[j])) return false;
    return true;
  }

  template <typename F, Regularizer kReg>
  FASTMLP_VECTOR_CLONES static double update_formed_range(const OptimizerConfig& cfg, const math::StepScalars& s,
                                                          const KernelGradient<T>& kg, T* p, T* st0, T* st1, T* st2,
                                                          int64_t lo, int64_t hi, T l1, T l2, T grad_scale, T trust,
                                                          int& overflowed) {
    alignas(64) T g[kPenaltyBlock + kGroup];
    const int64_t out = kg.out;
    // Per thread and kept, so a step allocates nothing; the kGroup values after dz are zeros.
    thread_local std::vector<T> dz_padded;
    dz_padded.resize(size_t(out + kGroup));
    std::copy(kg.dz, kg.dz + out, dz_padded.begin());
    std::fill(dz_padded.begin() + out, dz_padded.end(), T(0));
    auto at = [](T* base, int64_t k) { return base ? base + k : nullptr; };
    bool skip_zero_rows = false;
    if constexpr (kZeroRowsStay<F, kReg>) skip_zero_rows = zero_inputs_give_zero_gradients(s, kg);
    // Blocks of at most kPenaltyBlock elements, formed and updated; a skipped row ends a block.
    // Without skipping, blocks start every kPenaltyBlock from lo as in update_range, so the
    // penalty adds up in the same order. Rows are walked, not divided out of k: a division per
    // row cost more than the update it skipped.
    double penalty = 0.0;
    int64_t i = (lo - kg.offset) / out, j0 = (lo - kg.offset) - i * out;  // row i, from column j0
    for (int64_t k = lo; k < hi;) {
      if (skip_zero_rows && kg.x[i] == T(0)) {
        k += out - j0;
        ++i;
        j0 = 0;
        continue;
      }
      const int64_t start = k, block_end = std::min(hi, start + kPenaltyBlock);
      while (k < block_end && !(skip_zero_rows && kg.x[i] == T(0))) {
        const int64_t n = std::min(out - j0, block_end - k);
        form_row_part(kg.x[i], dz_padded.data() + j0, n, g + (k - start));
        k += n;
        j0 += n;
        if (j0 == out) {
          j0 = 0;
          ++i;
        }
      }
      penalty += update_range<F, kReg>(cfg, s, p + start, g, at(st0, start), at(st1, start), at(st2, start), 0,
                                       k - start, l1, l2, grad_scale, trust, overflowed);
    }
    return penalty;
  }

  // Updates params[lo, hi) and returns the regularization penalty of the pre-update values.
  // The config is copied with its kind and branch-selecting flags fixed as constants, so the
  // shared update in math.h inlines to branch-free code the compiler vectorizes. The owned
  // state slots go through locals, so the unowned ones (null) are never read or written.
  // s comes by value: read through a reference, its flags (SGD's first step, RAdam's
  // rectification) kept GCC from vectorizing the loop at all (momentum SGD ran scalar on every CPU).
  template <typename F, Regularizer kReg>
  FASTMLP_VECTOR_CLONES static double update_range(const OptimizerConfig& cfg, const math::StepScalars s,
                                                   T* __restrict p, const T* __restrict g, T* __restrict st0,
                                                   T* __restrict st1, T* __restrict st2, int64_t lo, int64_t hi,
                                                   T l1, T l2, T grad_scale, T trust, int& overflowed) {
    constexpr int kSlots = F::slots;
    OptimizerConfig c = cfg;
    c.kind = F::kind;
    c.amsgrad = F::amsgrad;
    c.centered = F::centered;
    if constexpr (!F::decay) c.weight_decay = 0.0;
    if constexpr (!F::momentum) c.momentum = 0.0;
    if constexpr (!F::clip) c.clipvalue = 0.0;
    double penalty = 0.0;
    int bad = 0;
    // One pass: the penalty of the weights the forward pass used (before the update) is summed
    // in the same loop that updates them (kPenaltyBlock).
    for (int64_t b0 = lo; b0 < hi; b0 += kPenaltyBlock) {
      const int64_t b1 = hi - b0 < kPenaltyBlock ? hi : b0 + kPenaltyBlock;
      T block_abs = T(0), block_squares = T(0);
#pragma omp simd reduction(| : bad) reduction(+ : block_abs, block_squares)
      for (int64_t k = b0; k < b1; ++k) {
        T gk = g[k];
        T pk = p[k];
        if constexpr (kReg == Regularizer::L2) {
          block_squares += pk * pk;
          gk += math::l2_regularization_grad(pk, l2);
        } else if constexpr (kReg == Regularizer::L1L2) {
          block_abs += std::fabs(pk);
          block_squares += pk * pk;
          gk += math::regularization_grad(pk, l1, l2);
        }
        if constexpr (F::clip) gk = math::clipped_gradient(c, gk, grad_scale);
        T s0 = kSlots > 0 ? st0[k] : T(0), s1 = kSlots > 1 ? st1[k] : T(0), s2 = kSlots > 2 ? st2[k] : T(0);
        bad |= math::guarded_update(c, s, pk, gk, s0, s1, s2, trust) ? 0 : 1;
        p[k] = pk;
        if constexpr (kSlots > 0) st0[k] = s0;
        if constexpr (kSlots > 1) st1[k] = s1;
        if constexpr (kSlots > 2) st2[k] = s2;
      }
      if constexpr (kReg != Regularizer::None)
        penalty += double(math::regularization_penalty_of_sums(block_abs, block_squares, l1, l2));
    }
    overflowed |= bad;
    return penalty;
  }
};

}  // namespace
}  // namespace fastmlp::cpu
