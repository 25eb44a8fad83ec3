// The CPU backend: GEMMs through BLAS, every element-wise pass fused into one loop (split over
// the worker threads of thread_pool.h) that calls the shared math in fastmlp/math.h.
#include <algorithm>
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
#include "cpu/optimizer_step.h"
#include "cpu/thread_pool.h"
#include "fastmlp/backend.h"
#include "fastmlp/math.h"

namespace fastmlp {
namespace {


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
    case A::Exponential: return f(std::integral_constant<A, A::Exponential>{});
    case A::Softplus: return f(std::integral_constant<A, A::Softplus>{});
    case A::Selu: return f(std::integral_constant<A, A::Selu>{});
    case A::Gelu: return f(std::integral_constant<A, A::Gelu>{});
    case A::Silu: return f(std::integral_constant<A, A::Silu>{});
    case A::Linear:
    case A::Softmax: break;  // a final softmax is the loss's: the layer itself is linear
  }
  return f(std::integral_constant<A, A::Linear>{});
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
    if (!bytes) return;
    auto* d = static_cast<char*>(dst);
    const auto* s = static_cast<const char*>(src);
    const bool overlap = d < s + bytes && s < d + bytes;
    // One core does not reach the memory bandwidth: train_on_batch's copy of an Adam model's
    // weights and moments (8 MB at 670k parameters) took 650 us on one thread.
    if (overlap || !cpu::parallel_copy(int64_t(bytes / sizeof(T)))) {
      std::memmove(dst, src, bytes);
      return;
    }
    constexpr int64_t kLine = 64;
    const int64_t lines = int64_t((bytes + kLine - 1) / kLine);
    cpu::parallel_for(lines, true, [&](int64_t lo, int64_t hi) {
      const size_t from = size_t(lo * kLine), to = std::min(bytes, size_t(hi * kLine));
      std::memcpy(d + from, s + from, to - from);
    });
  }
  void fill(T* dst, T value, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) dst[i] = value;
  }

  void gather_batch(int rows, int x_cols, int y_cols, const T* x, const T* y, const int32_t* perm,
                    const TrainCounters* counters, T* x_dst, T* y_dst) override {
    const int64_t start = counters->batch_start;
    // The rows are scattered over a data set usually larger than the caches, so the copy waits on
    // memory: it splits over the threads at a lower size than compute passes do, and each thread
    // asks for the row it copies kAhead rows later before copying this one.
    constexpr int64_t kAhead = 2;
    const int64_t line = 64 / int64_t(sizeof(T));
    cpu::parallel_for(rows, cpu::parallel_copy(int64_t(rows) * x_cols), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        if (i + kAhead < hi) {
          const T* ahead = x + int64_t(perm[start + i + kAhead]) * x_cols;
          for (int64_t c = 0; c < x_cols; c += line) __builtin_prefetch(ahead + c);
        }
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
    if (rows == 1) deferred_decay_.note_product(W, Y, out);  // its L2 penalty follows from it
    const T p = T(act.param);
    with_activation(act.kind, [&](auto kind) {
      cpu::parallel_for(rows, cpu::parallel_pass(int64_t(rows) * out), [&](int64_t lo, int64_t hi) {
        cpu::bias_activate_rows<kind.value>(lo, hi, out, b, p, Y);
      });
    });
    return false;
  }

  bool dense_backward(int rows, int in, int out, const T* X, const void* /*x_record*/, const T* W, const T* dZ,
                      T* dW, T* db, T* dX, ActivationSpec x_act, T* /*dX_bias_grad*/) override {
    if (dW) cpu::gemm(true, false, in, out, rows, T(1), X, in, dZ, out, T(0), dW, out);
    if (db) column_sums(rows, out, dZ, db);
    if (!dX) return false;
    cpu::gemm(false, true, rows, in, out, T(1), dZ, out, W, out, T(0), dX, in);
    if (x_act.kind == Activation::Linear) return false;
    const T p = T(x_act.param);
    const int64_t n = int64_t(rows) * in;
    with_activation(x_act.kind, [&](auto kind) {
      cpu::parallel_for(n, cpu::parallel_pass(n), [&](int64_t lo, int64_t hi) {
        cpu::scale_by_activation_grad<kind.value>(lo, hi, X, p, dX);
      });
    });
    return false;
  }

  void activation_forward(int rows, int cols, const T* X, ActivationSpec act, T* Y) override {
    const int64_t n = int64_t(rows) * cols;
    const T p = T(act.param);
    with_activation(act.kind, [&](auto kind) {
      cpu::parallel_for(n, cpu::parallel_pass(n), [&](int64_t lo, int64_t hi) {
        cpu::activate_range<kind.value>(lo, hi, X, p, Y);
      });
    });
  }

  void output_activation(int rows, int cols, ActivationSpec act, T* Z) override {
    const T p = T(act.param);
    const bool split = cpu::parallel_pass(int64_t(rows) * cols);
    if (act.kind == Activation::Softmax) {  // with_activation treats it as linear (the layer's view)
      cpu::parallel_for(rows, split, [&](int64_t lo, int64_t hi) {
        cpu::output_rows<Activation::Softmax>(lo, hi, cols, p, Z);
      });
      return;
    }
    with_activation(act.kind, [&](auto kind) {
      cpu::parallel_for(rows, split, [&](int64_t lo, int64_t hi) { cpu::output_rows<kind.value>(lo, hi, cols, p, Z); });
    });
  }

  void activation_backward(int rows, int cols, const T* X, const T* Y, const T* dY, ActivationSpec act,
                           ActivationSpec x_act, T* dX) override {
    const int64_t n = int64_t(rows) * cols;
    const T p = T(act.param), xp = T(x_act.param);
    with_activation(act.kind, [&](auto kind) {
      with_activation(x_act.kind, [&](auto x_kind) {
        cpu::parallel_for(n, cpu::parallel_pass(n), [&](int64_t lo, int64_t hi) {
          cpu::activation_backward_range<kind.value, x_kind.value>(lo, hi, X, Y, dY, p, xp, dX);
        });
      });
    });
  }

  void dropout_forward(int rows, int cols, const T* X, DropoutSpec d, const TrainCounters* counters,
                       T* Y) override {
    const int64_t n = int64_t(rows) * cols, step = counters->step, first = counters->row_offset * cols;
    const T scale = math::dropout_scale<T>(d.rate);
    cpu::parallel_for(n, cpu::parallel_pass(n), [&](int64_t lo, int64_t hi) {
      cpu::dropout_forward_range(lo, hi, X, d.seed, step, first, d.rate, scale, Y);
    });
  }

  void dropout_backward(int rows, int cols, const T* X, const T* dY, DropoutSpec d, const TrainCounters* counters,
                        ActivationSpec x_act, T* dX) override {
    const int64_t n = int64_t(rows) * cols, step = counters->step, first = counters->row_offset * cols;
    const T scale = math::dropout_scale<T>(d.rate), xp = T(x_act.param);
    with_activation(x_act.kind, [&](auto x_kind) {
      cpu::parallel_for(n, cpu::parallel_pass(n), [&](int64_t lo, int64_t hi) {
        cpu::dropout_backward_range<x_kind.value>(lo, hi, X, dY, d.seed, step, first, d.rate, scale, xp, dX);
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
      cpu::parallel_for(rows, cpu::parallel_pass(int64_t(rows) * cols), [&](int64_t lo, int64_t hi) {
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
    cpu::parallel_for(rows, cpu::parallel_pass(int64_t(rows) * cols), [&](int64_t lo, int64_t hi) {
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
        cpu::parallel_for(rows, cpu::parallel_pass(int64_t(rows) * cols), [&](int64_t lo, int64_t hi) {
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
      cpu::parallel_for(rows, cpu::parallel_pass(int64_t(rows) * cols), [&](int64_t lo, int64_t hi) {
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

  void metrics(int rows, int n_out, const T* Z, const T* Y, int y_cols, bool class_ids, Loss loss,
               ActivationSpec out_act, MetricSet set, double* slots) override {
    int used = 0;  // the slots the set touches
    for (int k = 0; k < set.count; ++k)
      used = std::max(used, set.specs[k].slot + metric_slot_count(set.specs[k].kind));
    // Each thread sums its rows into its own slots; the pieces add up in order (counts are exact).
    using Slots = std::vector<double>;
    const Slots sums = cpu::parallel_reduce(
        rows, cpu::parallel_pass(int64_t(rows) * n_out * set.count), Slots(size_t(used), 0.0),
        [&](int64_t lo, int64_t hi) {
          Slots mine(size_t(used), 0.0);
          auto add = [&mine](int slot, double v) { mine[size_t(slot)] += v; };
          for (int64_t i = lo; i < hi; ++i)
            for (int k = 0; k < set.count; ++k)
              math::metric_row(set.specs[k], loss, out_act, class_ids, n_out, Z + i * n_out, Y + i * y_cols, add);
          return mine;
        },
        [](Slots a, const Slots& b) {
          for (size_t j = 0; j < a.size(); ++j) a[j] += b[j];
          return a;
        });
    for (int j = 0; j < used; ++j) slots[j] += sums[size_t(j)];
  }

  bool host_memory() const override { return true; }

  void loss(int rows, int n_out, const T* Z, const T* Y, int y_cols, bool weighted, Loss loss, double loss_param,
            Metric metric, ActivationSpec out_act, T* dZ, TrainCounters* counters) override {
    const T scale = T(1) / T(counters->gradient_rows > 0 ? counters->gradient_rows : rows);
    using Sums = std::pair<double, double>;  // loss, metric
    const Sums sums = cpu::parallel_reduce(
        rows, cpu::parallel_pass(int64_t(rows) * n_out), Sums{0.0, 0.0},
        [&](int64_t lo, int64_t hi) {
          return cpu::loss_rows(lo, hi, n_out, Z, Y, y_cols, weighted, loss, T(loss_param), metric, out_act, scale,
                                dZ);
        },
        [](Sums a, Sums b) { return Sums{a.first + b.first, a.second + b.second}; });
    const double loss_sum = sums.first, metric_sum = sums.second;
    if (!std::isfinite(loss_sum)) counters->nonfinite = 1;
    counters->loss_sum += loss_sum;
    counters->metric_sum += metric_sum;
  }

  void matmul(bool ta, bool tb, int m, int n, int k, const T* A, const T* B, T* C) override {
    cpu::gemm(ta, tb, m, n, k, T(1), A, ta ? m : k, B, tb ? k : n, T(0), C, n);
  }

  void axpy(int64_t n, T alpha, const T* X, T* Y) override {
    for (int64_t i = 0; i < n; ++i) Y[i] += alpha * X[i];
  }

  void activation_second_order(int64_t n, const T* A, const T* G, const T* RG, const T* RZ, ActivationSpec act,
                               T* RD) override {
    const T p = T(act.param);
    for (int64_t i = 0; i < n; ++i)
      RD[i] = RG[i] * math::activation_grad_from_output(act.kind, p, A[i]) +
              G[i] * math::activation_second_grad_from_output(act.kind, p, A[i]) * RZ[i];
  }

  void loss_hessian_vector(int rows, int n_out, const T* Z, const T* Y, int y_cols, bool weighted, Loss loss,
                           double loss_param, ActivationSpec out_act, const T* RZ, T* RDZ) override {
    const T scale = T(1) / T(rows);
    for (int i = 0; i < rows; ++i) {
      const T* y = Y + int64_t(i) * y_cols;
      math::loss_row_hessian_vector(loss, T(loss_param), out_act, n_out, Z + int64_t(i) * n_out, y, RZ + int64_t(i) * n_out,
                                    scale * math::row_weight(y, y_cols, weighted), RDZ + int64_t(i) * n_out);
    }
  }

  void optimizer_step(int64_t n_params, T* params, const T* grads, T* state, int slots,
                      const ParamSegment* segments, int n_segments, bool any_regularizer,
                      const OptimizerConfig* config, int norm_passes, double* segment_norms,
                      TrainCounters* counters, int rows, const KernelGradient<T>* kernel_grads,
                      int n_kernel_grads) override {
    cpu::OptimizerStep<T>::run(n_params, params, grads, state, slots, segments, n_segments, any_regularizer, *config,
                               norm_passes ? segment_norms : nullptr, counters, rows, kernel_grads, n_kernel_grads,
                               &deferred_decay_);
  }

  const T* deferred_decay_input(T* params, const T* x) override { return deferred_decay_.scaled_input(params, x); }
  void apply_deferred_decay(T* params) override { deferred_decay_.settle_all(params); }
  void expose_deferred_decay(T* params) override { deferred_decay_.expose(params); }

  // At batch 1 the weight-gradient GEMM wrote, and the update read back, as many values as the
  // kernels have: forming them in the update took 784-100-10 SGD from 18.9 to 17.1 us per row.
  // At 2 to 8 rows a GEMM forms them faster (at 4 rows: 7.2 us per row with it, 11.4 without).
  bool forms_kernel_gradients() const override { return true; }

 private:
  // Per-column scratch of the normalization ops (an engine's calls never overlap).
  std::vector<T> col_mean_, col_inv_;
  cpu::DeferredDecay<T> deferred_decay_;  // batch-1 SGD's L2 decay of the first kernel, as one scale
  std::vector<double> col_sum_, col_sum2_;

  static void column_sums(int rows, int cols, const T* M, T* out) {
    // Each thread owns bands of 64 columns, so the sums need no reduction across threads.
    const int64_t bands = (cols + 63) / 64;
    cpu::parallel_for(bands, cpu::parallel_pass(int64_t(rows) * cols), [&](int64_t b0, int64_t b1) {
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
