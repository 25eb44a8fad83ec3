// The CPU backend: GEMMs through BLAS, every element-wise pass fused into one loop (split over
// the worker threads of thread_pool.h) that calls the shared math in fastmlp/math.h.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <stdexcept>
#include <utility>
#include <vector>

#include "cpu/blas.h"
#include "cpu/elementwise.h"
#include "cpu/thread_pool.h"
#include "fastmlp/backend.h"
#include "fastmlp/math.h"

namespace fastmlp {
namespace {

// Below this many elements a parallel region costs more than it saves: waking a worker and
// waiting for it takes several microseconds, while an AVX-512 pass over 100k floats in cache
// takes about as long. Measured (784-100-10 SGD, 2 threads, us per row at batch 1 / 16 / 100):
// 2^14 gave 25.5 / 7.1 / 3.9, 2^17 gives 18.7 / 6.9 / 3.7; 784-512-512-10 Adam at batch 32 and
// 128 did not change (the 670k-parameter update still splits).
constexpr int64_t kParallelThreshold = 1 << 17;
inline bool parallel_pass(int64_t elements) { return elements > kParallelThreshold; }

// Calls f(std::integral_constant<Kind, k>) for the runtime value k, so the loop inside f sees
// the activation or optimizer as a constant: the switch in math.h folds away and loops vectorize.
template <typename F>
void with_activation(Activation k, F&& f) {
  using A = Activation;
  switch (k) {
    case A::Sigmoid: return f(std::integral_constant<A, A::Sigmoid>{});
    case A::Tanh: return f(std::integral_constant<A, A::Tanh>{});
    case A::Relu: return f(std::integral_constant<A, A::Relu>{});
    case A::LeakyRelu: return f(std::integral_constant<A, A::LeakyRelu>{});
    case A::Elu: return f(std::integral_constant<A, A::Elu>{});
    default: return f(std::integral_constant<A, A::Linear>{});
  }
}

template <typename F>
void with_bool(bool b, F&& f) {
  if (b) return f(std::true_type{});
  return f(std::false_type{});
}

template <typename F>
void with_optimizer(OptimizerKind k, F&& f) {
  using O = OptimizerKind;
  switch (k) {
    case O::SGD: return f(std::integral_constant<O, O::SGD>{});
    case O::Adagrad: return f(std::integral_constant<O, O::Adagrad>{});
    case O::RMSprop: return f(std::integral_constant<O, O::RMSprop>{});
    case O::Adadelta: return f(std::integral_constant<O, O::Adadelta>{});
    case O::Adam: return f(std::integral_constant<O, O::Adam>{});
    case O::AdamW: return f(std::integral_constant<O, O::AdamW>{});
  }
}

template <typename T>
class CpuBackend final : public Backend<T> {
 public:
  std::string name() const override { return "cpu"; }

  void* allocate(size_t bytes) override {
    const size_t rounded = ((bytes + 63) / 64) * 64;
    void* p = rounded ? std::aligned_alloc(64, rounded) : nullptr;
    if (rounded && !p) throw OutOfMemory("out of host memory allocating " + std::to_string(bytes) + " bytes");
    if (p) std::memset(p, 0, rounded);
    return p;
  }
  void release(void* p) noexcept override { std::free(p); }
  void to_backend(void* dst, const void* src, size_t bytes) override { copy(dst, src, bytes); }
  void to_host(void* dst, const void* src, size_t bytes) override { copy(dst, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memmove(dst, src, bytes);
  }
  void fill(T* dst, T value, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) dst[i] = value;
  }

  void gather_batch(int rows, int x_cols, int y_cols, const T* x, const T* y, const int32_t* perm,
                    const TrainCounters* counters, T* x_dst, T* y_dst) override {
    const int64_t start = counters->batch_start;
    cpu::parallel_for(rows, parallel_pass(int64_t(rows) * x_cols), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t r = perm[start + i];
        std::memcpy(x_dst + i * x_cols, x + r * x_cols, sizeof(T) * x_cols);
        std::memcpy(y_dst + i * y_cols, y + r * y_cols, sizeof(T) * y_cols);
      }
    });
  }

  // Keeps no activation record: the derivative is taken from the activation's output.
  bool dense_forward(int rows, int in, int out, const T* X, const T* W, const T* b, ActivationSpec act, T* Y,
                     void* /*record*/) override {
    cpu::gemm(false, false, rows, out, in, T(1), X, in, W, out, T(0), Y, out);
    const T p = T(act.param);
    with_activation(act.kind, [&](auto kind) {
      cpu::parallel_for(rows, parallel_pass(int64_t(rows) * out), [&](int64_t lo, int64_t hi) {
        cpu::bias_activate_rows<kind.value>(lo, hi, out, b, p, Y);
      });
    });
    return false;
  }

  bool dense_backward(int rows, int in, int out, const T* X, const void* /*x_record*/, const T* W, const T* dZ,
                      T* dW, T* db, T* dX, ActivationSpec x_act, T* /*dX_bias_grad*/) override {
    cpu::gemm(true, false, in, out, rows, T(1), X, in, dZ, out, T(0), dW, out);
    if (db) column_sums(rows, out, dZ, db);
    if (!dX) return false;
    cpu::gemm(false, true, rows, in, out, T(1), dZ, out, W, out, T(0), dX, in);
    if (x_act.kind == Activation::Linear) return false;
    const T p = T(x_act.param);
    const int64_t n = int64_t(rows) * in;
    with_activation(x_act.kind, [&](auto kind) {
      cpu::parallel_for(n, parallel_pass(n), [&](int64_t lo, int64_t hi) {
        cpu::scale_by_activation_grad<kind.value>(lo, hi, X, p, dX);
      });
    });
    return false;
  }

  void activation_forward(int rows, int cols, const T* X, ActivationSpec act, T* Y) override {
    const int64_t n = int64_t(rows) * cols;
    const T p = T(act.param);
    with_activation(act.kind, [&](auto kind) {
      cpu::parallel_for(n, parallel_pass(n), [&](int64_t lo, int64_t hi) {
        cpu::activate_range<kind.value>(lo, hi, X, p, Y);
      });
    });
  }

  void activation_backward(int rows, int cols, const T* X, const T* Y, const T* dY, ActivationSpec act,
                           ActivationSpec x_act, T* dX) override {
    const int64_t n = int64_t(rows) * cols;
    const T p = T(act.param), xp = T(x_act.param);
    with_activation(act.kind, [&](auto kind) {
      with_activation(x_act.kind, [&](auto x_kind) {
        cpu::parallel_for(n, parallel_pass(n), [&](int64_t lo, int64_t hi) {
          cpu::activation_backward_range<kind.value, x_kind.value>(lo, hi, X, Y, dY, p, xp, dX);
        });
      });
    });
  }

  void dropout_forward(int rows, int cols, const T* X, DropoutSpec d, const TrainCounters* counters,
                       T* Y) override {
    const int64_t n = int64_t(rows) * cols, step = counters->step;
    const T scale = math::dropout_scale<T>(d.rate);
    cpu::parallel_for(n, parallel_pass(n), [&](int64_t lo, int64_t hi) {
      cpu::dropout_forward_range(lo, hi, X, d.seed, step, d.rate, scale, Y);
    });
  }

  void dropout_backward(int rows, int cols, const T* X, const T* dY, DropoutSpec d, const TrainCounters* counters,
                        ActivationSpec x_act, T* dX) override {
    const int64_t n = int64_t(rows) * cols, step = counters->step;
    const T scale = math::dropout_scale<T>(d.rate), xp = T(x_act.param);
    with_activation(x_act.kind, [&](auto x_kind) {
      cpu::parallel_for(n, parallel_pass(n), [&](int64_t lo, int64_t hi) {
        cpu::dropout_backward_range<x_kind.value>(lo, hi, X, dY, d.seed, step, d.rate, scale, xp, dX);
      });
    });
  }

  void normalize_forward(NormSpec ns, int rows, int cols, const T* X, const T* gamma, const T* beta,
                         const T* mean_in, const T* var_in, T* Y, T* xhat, T* inv_std, T* mean_out,
                         T* var_out) override {
    const T eps = T(ns.epsilon);
    auto g = [gamma](int j) { return gamma ? gamma[j] : T(1); };
    auto b = [beta](int j) { return beta ? beta[j] : T(0); };
    if (ns.axis == NormAxis::Features) {  // one group per row
      cpu::parallel_for(rows, parallel_pass(int64_t(rows) * cols), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const T* x = X + i * cols;
        double sum = 0.0;
        for (int j = 0; j < cols; ++j) sum += x[j];
        const T mean = T(sum / cols);
        double sq = 0.0;
        for (int j = 0; j < cols; ++j) sq += double(x[j] - mean) * double(x[j] - mean);
        const T inv = math::normalize_inv_std(T(sq / cols), eps);
        inv_std[i] = inv;
        T* h = xhat + i * cols;
        T* y = Y + i * cols;
        for (int j = 0; j < cols; ++j) {
          h[j] = (x[j] - mean) * inv;
          y[j] = g(j) * h[j] + b(j);
        }
      }
      });
      return;
    }
    // Batch axis: one group per column. Statistics accumulate row by row (contiguous reads).
    std::vector<T>&mean = col_mean_, &inv = col_inv_;  // reused: no allocation per step
    mean.resize(cols);
    inv.resize(cols);
    if (mean_in) {
      for (int j = 0; j < cols; ++j) {
        mean[j] = mean_in[j];
        inv[j] = math::normalize_inv_std(var_in[j], eps);
      }
    } else {
      std::vector<double>&sum = col_sum_, &sq = col_sum2_;
      sum.assign(cols, 0.0);
      sq.assign(cols, 0.0);
      for (int i = 0; i < rows; ++i) {
        const T* x = X + int64_t(i) * cols;
        for (int j = 0; j < cols; ++j) sum[j] += x[j];
      }
      for (int j = 0; j < cols; ++j) mean[j] = T(sum[j] / rows);
      for (int i = 0; i < rows; ++i) {
        const T* x = X + int64_t(i) * cols;
        for (int j = 0; j < cols; ++j) sq[j] += double(x[j] - mean[j]) * double(x[j] - mean[j]);
      }
      for (int j = 0; j < cols; ++j) {
        const T var = T(sq[j] / rows);  // biased, as Keras and PyTorch normalize
        inv[j] = math::normalize_inv_std(var, eps);
        inv_std[j] = inv[j];
        if (mean_out) mean_out[j] = mean[j];
        if (var_out) var_out[j] = var;
      }
    }
    cpu::parallel_for(rows, parallel_pass(int64_t(rows) * cols), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const T* x = X + i * cols;
        T* y = Y + i * cols;
        T* h = mean_in ? nullptr : xhat + i * cols;
        for (int j = 0; j < cols; ++j) {
          const T hj = (x[j] - mean[j]) * inv[j];
          if (h) h[j] = hj;
          y[j] = g(j) * hj + b(j);
        }
      }
    });
  }

  void normalize_backward(NormSpec ns, int rows, int cols, const T* X, const T* xhat, const T* inv_std,
                          const T* gamma, const T* dY, T* dgamma, T* dbeta, ActivationSpec x_act,
                          T* dX) override {
    auto g = [gamma](int j) { return gamma ? gamma[j] : T(1); };
    const T xp = T(x_act.param);
    // dgamma and dbeta sum over rows for both axes (gamma and beta are per feature).
    std::vector<double>&sum_dy = col_sum_, &sum_dy_xhat = col_sum2_;  // reused: no allocation per step
    sum_dy.assign(cols, 0.0);
    sum_dy_xhat.assign(cols, 0.0);
    for (int i = 0; i < rows; ++i) {
      const T* dy = dY + int64_t(i) * cols;
      const T* h = xhat + int64_t(i) * cols;
      for (int j = 0; j < cols; ++j) {
        sum_dy[j] += dy[j];
        sum_dy_xhat[j] += double(dy[j]) * h[j];
      }
    }
    if (dgamma)
      for (int j = 0; j < cols; ++j) dgamma[j] = T(sum_dy_xhat[j]);
    if (dbeta)
      for (int j = 0; j < cols; ++j) dbeta[j] = T(sum_dy[j]);
    if (!dX) return;
    with_activation(x_act.kind, [&](auto x_kind) {
      if (ns.axis == NormAxis::Batch) {
        const T n = T(rows);
        cpu::parallel_for(rows, parallel_pass(int64_t(rows) * cols), [&](int64_t lo, int64_t hi) {
          for (int64_t i = lo; i < hi; ++i) {
            const int64_t o = i * cols;
            for (int j = 0; j < cols; ++j)
              dX[o + j] = math::normalize_input_grad(dY[o + j] * g(j), xhat[o + j], inv_std[j], n,
                                                     T(g(j) * sum_dy[j]), T(g(j) * sum_dy_xhat[j])) *
                          math::activation_grad_from_output(x_kind.value, xp, X[o + j]);
          }
        });
        return;
      }
      const T n = T(cols);
      cpu::parallel_for(rows, parallel_pass(int64_t(rows) * cols), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t o = i * cols;
        double s = 0.0, sh = 0.0;
        for (int j = 0; j < cols; ++j) {
          const double dh = double(dY[o + j]) * g(j);
          s += dh;
          sh += dh * xhat[o + j];
        }
        for (int j = 0; j < cols; ++j)
          dX[o + j] = math::normalize_input_grad(dY[o + j] * g(j), xhat[o + j], inv_std[i], n, T(s), T(sh)) *
                      math::activation_grad_from_output(x_kind.value, xp, X[o + j]);
      }
      });
    });
  }

  void loss(int rows, int n_out, const T* Z, const T* Y, int y_cols, Loss loss, Metric metric,
            ActivationSpec out_act, T* dZ, TrainCounters* counters) override {
    const T scale = T(1) / T(rows);
    using Sums = std::pair<double, double>;  // loss, metric
    const Sums sums = cpu::parallel_reduce(
        rows, parallel_pass(int64_t(rows) * n_out), Sums{0.0, 0.0},
        [&](int64_t lo, int64_t hi) {
          Sums part{0.0, 0.0};
          for (int64_t i = lo; i < hi; ++i) {
            const auto r = math::loss_row(loss, metric, out_act, n_out, Z + i * n_out, Y + i * y_cols, scale,
                                          dZ ? dZ + i * n_out : nullptr);
            part.first += r.loss;
            part.second += r.metric;
          }
          return part;
        },
        [](Sums a, Sums b) { return Sums{a.first + b.first, a.second + b.second}; });
    const double loss_sum = sums.first, metric_sum = sums.second;
    if (!std::isfinite(loss_sum)) counters->nonfinite = 1;
    counters->loss_sum += loss_sum;
    counters->metric_sum += metric_sum;
  }

  void optimizer_step(int64_t n_params, T* params, const T* grads, T* state, int slots,
                      const ParamSegment* segments, int n_segments, bool any_regularizer,
                      const OptimizerConfig* config, TrainCounters* counters, int rows) override {
    if (counters->nonfinite) {  // keep the last good weights; the epoch still walks its batches
      counters->batch_start += rows;
      return;
    }
    const math::StepScalars s = math::step_scalars(*config, counters->step);
    // Slots the optimizer does not own are null: update_range never touches them, so no two
    // pointers alias (they are __restrict there).
    T* st0 = slots > 0 ? state : nullptr;
    T* st1 = slots > 1 ? state + n_params : nullptr;
    T* st2 = slots > 2 ? state + 2 * n_params : nullptr;
    double penalty = 0.0;
    int overflowed = 0;
    const OptimizerConfig& cfg = *config;
    // Only the flags a kind reads become compile-time constants (amsgrad for Adam, centered for
    // RMSprop, momentum for SGD and RMSprop): a quarter of the variants to compile.
    with_optimizer(cfg.kind, [&](auto kind) {
      constexpr OptimizerKind K = std::decay_t<decltype(kind)>::value;
      constexpr bool adam = K == OptimizerKind::Adam || K == OptimizerKind::AdamW;
      constexpr bool rms = K == OptimizerKind::RMSprop;
      constexpr bool has_momentum = K == OptimizerKind::SGD || rms;
      with_bool(adam && cfg.amsgrad, [&](auto amsgrad) {
        with_bool(rms && cfg.centered, [&](auto centered) {
          with_bool(has_momentum && cfg.momentum != 0.0, [&](auto momentum) {
            with_bool(cfg.weight_decay != 0.0, [&](auto decay) {
              if constexpr ((adam || !std::decay_t<decltype(amsgrad)>::value) && (rms || !std::decay_t<decltype(centered)>::value) &&
                            (has_momentum || !std::decay_t<decltype(momentum)>::value)) {
                using Flags = UpdateFlags<K, std::decay_t<decltype(amsgrad)>::value, std::decay_t<decltype(decay)>::value,
                                          std::decay_t<decltype(momentum)>::value, std::decay_t<decltype(centered)>::value>;
                if (Flags::slots != slots)  // the engine sized the state with optimizer_state_slots
                  throw std::logic_error("optimizer state has " + std::to_string(slots) +
                                         " slots, the update uses " + std::to_string(Flags::slots));
                const auto r = update_segments<Flags>(cfg, s, params, grads, st0, st1, st2, segments, n_segments);
                penalty += r.first;
                overflowed |= r.second;
              }
            });
          });
        });
      });
    });
    if (any_regularizer) counters->reg_sum += penalty * rows;
    if (overflowed) counters->nonfinite = 1;  // later steps are skipped; the weights stay finite
    counters->step += 1;
    counters->batch_start += rows;
  }

 private:
  // Per-column scratch of the normalization ops (an engine's calls never overlap).
  std::vector<T> col_mean_, col_inv_;
  std::vector<double> col_sum_, col_sum2_;

  // Compile-time choices of one optimizer variant (see update_range).
  template <OptimizerKind K, bool kAmsgrad, bool kDecay, bool kMomentum, bool kCentered>
  struct UpdateFlags {
    static constexpr OptimizerKind kind = K;
    static constexpr bool amsgrad = kAmsgrad, decay = kDecay, momentum = kMomentum, centered = kCentered;
    // The state slots such a config owns: optimizer_state_slots, as a constant.
    static constexpr int slots = K == OptimizerKind::SGD        ? (kMomentum ? 1 : 0)
                                 : K == OptimizerKind::Adagrad  ? 1
                                 : K == OptimizerKind::RMSprop  ? 1 + kCentered + kMomentum
                                 : K == OptimizerKind::Adadelta ? 2
                                                                : (kAmsgrad ? 3 : 2);
  };

  // One optimizer variant over every segment: returns the penalty and whether an update overflowed.
  template <typename Flags>
  static std::pair<double, int> update_segments(const OptimizerConfig& cfg, const math::StepScalars& s, T* params,
                                                const T* grads, T* st0, T* st1, T* st2,
                                                const ParamSegment* segments, int n_segments) {
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
      // Each thread updates one contiguous chunk with a plain loop; penalties add up in order.
      const Result r = cpu::parallel_reduce(
          seg.size, parallel_pass(seg.size), Result{0.0, 0},
          [&](int64_t from, int64_t to) {
            int bad = 0;
            const int64_t lo = seg.offset + from, hi = seg.offset + to;
            const T l1 = T(seg.l1), l2 = T(seg.l2);
            double pen = 0.0;
            if (seg.l1 != 0.0)
              pen = update_range<Flags, Regularizer::L1L2>(cfg, s, params, grads, st0, st1, st2, lo, hi, l1, l2, bad);
            else if (seg.l2 != 0.0)
              pen = update_range<Flags, Regularizer::L2>(cfg, s, params, grads, st0, st1, st2, lo, hi, l1, l2, bad);
            else
              pen = update_range<Flags, Regularizer::None>(cfg, s, params, grads, st0, st1, st2, lo, hi, l1, l2, bad);
            return Result{pen, bad};
          },
          [](Result a, Result b) { return Result{a.first + b.first, a.second | b.second}; });
      total.first += r.first;
      total.second |= r.second;
    }
    return total;
  }

  // Updates params[lo, hi) and returns the regularization penalty of the pre-update values.
  // The config is copied with its kind and branch-selecting flags fixed as constants, so the
  // shared update in math.h inlines to branch-free code the compiler vectorizes. The owned
  // state slots go through locals, so the unowned ones (null) are never read or written.
  enum class Regularizer { None, L2, L1L2 };  // L2 alone skips sign(w)

  template <typename Flags, Regularizer kReg>
  FASTMLP_VECTOR_CLONES static double update_range(const OptimizerConfig& cfg, const math::StepScalars& s, T* __restrict p,
                             const T* __restrict g, T* __restrict st0, T* __restrict st1, T* __restrict st2,
                             int64_t lo, int64_t hi, T l1, T l2, int& overflowed) {
    constexpr int kSlots = Flags::slots;
    OptimizerConfig c = cfg;
    c.kind = Flags::kind;
    c.amsgrad = Flags::amsgrad;
    c.centered = Flags::centered;
    if constexpr (!Flags::decay) c.weight_decay = 0.0;
    if constexpr (!Flags::momentum) c.momentum = 0.0;
    double penalty = 0.0;
    int bad = 0;
    // One pass: the penalty of the weights the forward pass used (before the update) is summed
    // in the same loop that updates them, in T within blocks of kPenaltyBlock elements and in
    // double across blocks (a double sum per element halved the vector width: at batch 1 the
    // L2 step cost 1.9x the plain one).
    constexpr int64_t kPenaltyBlock = 512;
    for (int64_t b0 = lo; b0 < hi; b0 += kPenaltyBlock) {
      const int64_t b1 = hi - b0 < kPenaltyBlock ? hi : b0 + kPenaltyBlock;
      T block_penalty = T(0);
#pragma omp simd reduction(| : bad) reduction(+ : block_penalty)
      for (int64_t k = b0; k < b1; ++k) {
        T gk = g[k];
        T pk = p[k];
        if constexpr (kReg == Regularizer::L2) {
          block_penalty += math::l2_regularization_penalty(pk, l2);
          gk += math::l2_regularization_grad(pk, l2);
        } else if constexpr (kReg == Regularizer::L1L2) {
          block_penalty += math::regularization_penalty(pk, l1, l2);
          gk += math::regularization_grad(pk, l1, l2);
        }
        T s0 = kSlots > 0 ? st0[k] : T(0), s1 = kSlots > 1 ? st1[k] : T(0), s2 = kSlots > 2 ? st2[k] : T(0);
        bad |= math::guarded_update(c, s, pk, gk, s0, s1, s2) ? 0 : 1;
        p[k] = pk;
        if constexpr (kSlots > 0) st0[k] = s0;
        if constexpr (kSlots > 1) st1[k] = s1;
        if constexpr (kSlots > 2) st2[k] = s2;
      }
      penalty += double(block_penalty);
    }
    overflowed |= bad;
    return penalty;
  }

  static void column_sums(int rows, int cols, const T* M, T* out) {
    // Each thread owns bands of 64 columns, so the sums need no reduction across threads.
    const int64_t bands = (cols + 63) / 64;
    cpu::parallel_for(bands, parallel_pass(int64_t(rows) * cols), [&](int64_t b0, int64_t b1) {
      for (int64_t band = b0; band < b1; ++band) {
        const int j0 = int(band * 64), j1 = j0 + 64 < cols ? j0 + 64 : cols;
        cpu::column_sums_band(rows, cols, M, j0, j1, out);
      }
    });
  }
};

}  // namespace

template <typename T>
std::unique_ptr<Backend<T>> make_cpu_backend() {
  return std::make_unique<CpuBackend<T>>();
}
template std::unique_ptr<Backend<float>> make_cpu_backend<float>();
template std::unique_ptr<Backend<double>> make_cpu_backend<double>();

}  // namespace fastmlp
