// The per-element math of fastmlp, written once for both backends.
//
// Every activation, its derivative, every loss with its gradient, every optimizer update and
// every learning-rate schedule is an inline function here. The CPU backend calls them in its
// loops, the CUDA kernels call them per thread, so the two backends cannot drift apart.
// Formulas follow torch.optim / Keras; docs/formulas.md lists them in prose.
#pragma once
#include <cmath>
#include <cstdint>

#include "fastmlp/elementary.h"
#include "fastmlp/types.h"

#if defined(__CUDACC__)
#define FASTMLP_HD __host__ __device__ __forceinline__
#else
#define FASTMLP_HD inline __attribute__((always_inline))  // lets loops specialize and vectorize
#endif

namespace fastmlp {
namespace math {

#if !defined(__CUDA_ARCH__)
// Host code gets the float and double overloads from std; CUDA device code has its own.
using std::ceil;
using std::cos;
using std::fabs;
using std::isfinite;
using std::floor;
using std::log;
using std::pow;
using std::sqrt;
// float exp, expm1, log1p, tanh and erf in arithmetic the CPU loops vectorize (elementary.h);
// double keeps libm's.
// CUDA device code gets CUDA's own float and double overloads.
FASTMLP_HD float exp(float x) { return elementary::exp(x); }
FASTMLP_HD double exp(double x) { return std::exp(x); }
FASTMLP_HD float expm1(float x) { return elementary::expm1(x); }
FASTMLP_HD double expm1(double x) { return std::expm1(x); }
FASTMLP_HD float log1p(float x) { return elementary::log1p(x); }
FASTMLP_HD double log1p(double x) { return std::log1p(x); }
FASTMLP_HD float tanh(float x) { return elementary::tanh(x); }
FASTMLP_HD double tanh(double x) { return std::tanh(x); }
FASTMLP_HD float erf(float x) { return elementary::erf(x); }
FASTMLP_HD double erf(double x) { return std::erf(x); }
#endif

template <typename T>
FASTMLP_HD T sigmoid(T z) {
  // 1/(1+e^-z), or e^z/(1+e^z) for z<0, so exp never overflows; one exp and a select, no branch,
  // so CPU loops vectorize it.
  const T e = exp(-fabs(z));
  return (z >= T(0) ? T(1) : e) / (T(1) + e);
}

// ---------------------------------------------------------------- activations
// SELU's constants (Klambauer et al. 2017), as Keras and PyTorch use them.
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr double kInvSqrt2 = 0.70710678118654752440084436210485;
constexpr double kInvSqrt2Pi = 0.39894228040143267793994605993438;

// Activations whose derivative is not a function of their output (not monotone): the engine
// keeps their input, as an Activation op after a linear Dense (Engine::lower), and takes the
// derivative from it (activation_grad).
FASTMLP_HD constexpr bool grad_needs_input(Activation kind) {
  return kind == Activation::Gelu || kind == Activation::Silu;
}

template <typename T>
FASTMLP_HD T activate(Activation kind, T param, T z) {
  switch (kind) {
    case Activation::Sigmoid: return sigmoid(z);
    case Activation::Tanh: return tanh(z);
    case Activation::Relu: return z > T(0) ? z : T(0);
    case Activation::LeakyRelu: return z > T(0) ? z : param * z;
    case Activation::Elu: return z > T(0) ? z : param * (exp(z) - T(1));
    case Activation::Exponential: return exp(z);
    case Activation::Softplus: return (z > T(0) ? z : T(0)) + log1p(exp(-fabs(z)));  // log(1 + e^z), stable
    case Activation::Selu:
      return T(kSeluScale) * (z > T(0) ? z : T(kSeluAlpha) * expm1(z));
    case Activation::Gelu: return T(0.5) * z * (T(1) + erf(z * T(kInvSqrt2)));  // exact: z * Phi(z)
    case Activation::Silu: return z * sigmoid(z);
    default: return z;  // Linear; Softmax is a row operation, see softmax_row
  }
}

// f'(z) written in terms of the output a = f(z), so the forward pass stores only a.
// Valid because every supported activation is monotone with f(z) > 0 <=> z > 0, or (exp) its own
// derivative (leaky slope >= 0 and elu alpha > 0 are enforced when a layer is built).
template <typename T>
FASTMLP_HD T activation_grad_from_output(Activation kind, T param, T a) {
  switch (kind) {
    case Activation::Sigmoid: return a * (T(1) - a);
    case Activation::Tanh: return T(1) - a * a;
    case Activation::Relu: return a > T(0) ? T(1) : T(0);
    case Activation::LeakyRelu: return a > T(0) ? T(1) : param;
    case Activation::Elu: return a > T(0) ? T(1) : a + param;
    case Activation::Exponential: return a;
    case Activation::Softplus: return -expm1(-a);  // sigmoid(z) = 1 - e^-a
    case Activation::Selu: return a > T(0) ? T(kSeluScale) : a + T(kSeluScale * kSeluAlpha);
    // Not a function of a: activation_grad takes z. A NaN here makes a misuse loud, not wrong.
    case Activation::Gelu:
    case Activation::Silu: return T(NAN);
    default: return T(1);
  }
}

// f''(z) written through the output a, for Hessian-vector products: 0 where f is piecewise
// linear (ReLU and leaky ReLU have no second derivative at 0 and 0 elsewhere; the same at ELU's z=0).
template <typename T>
FASTMLP_HD T activation_second_grad_from_output(Activation kind, T param, T a) {
  switch (kind) {
    case Activation::Sigmoid: return a * (T(1) - a) * (T(1) - T(2) * a);
    case Activation::Tanh: return T(-2) * a * (T(1) - a * a);
    case Activation::Elu: return a > T(0) ? T(0) : a + param;
    case Activation::Exponential: return a;
    case Activation::Softplus: {
      const T s = -expm1(-a);
      return s * (T(1) - s);
    }
    case Activation::Selu: return a > T(0) ? T(0) : a + T(kSeluScale * kSeluAlpha);
    case Activation::Gelu:
    case Activation::Silu: return T(NAN);  // see activation_second_grad
    default: return T(0);
  }
}

// f'(z) for any activation, given both its input z and output a = f(z).
template <typename T>
FASTMLP_HD T activation_grad(Activation kind, T param, T z, T a) {
  switch (kind) {
    case Activation::Gelu: return T(0.5) * (T(1) + erf(z * T(kInvSqrt2))) + z * T(kInvSqrt2Pi) * exp(T(-0.5) * z * z);
    case Activation::Silu: {
      const T s = sigmoid(z);
      return s * (T(1) + z * (T(1) - s));
    }
    default: return activation_grad_from_output(kind, param, a);
  }
}

// f''(z) for any activation, given z and a = f(z).
template <typename T>
FASTMLP_HD T activation_second_grad(Activation kind, T param, T z, T a) {
  switch (kind) {
    case Activation::Gelu: return T(kInvSqrt2Pi) * exp(T(-0.5) * z * z) * (T(2) - z * z);
    case Activation::Silu: {
      const T s = sigmoid(z);
      return s * (T(1) - s) * (T(2) + z * (T(1) - T(2) * s));
    }
    default: return activation_second_grad_from_output(kind, param, a);
  }
}

// ------------------------------------------------------------------- losses
// Row helpers: n outputs of one sample. Every loss starts from the pre-activation z.

// Row reductions over kRowLanes partial results, lane j % kRowLanes, combined in lane order: the
// CPU loops vectorize them with the same result at every vector width (a serial sum does not
// vectorize), and a CUDA thread adds in the same order. Rows of 1000 classes spent most of their
// loss and predict time in serial sums and maxima.
constexpr int kRowLanes = 16;

// The largest z[j]; NaN only if z[0] is NaN (as a serial scan from z[0] gives).
template <typename T>
FASTMLP_HD T row_max(int n, const T* z) {
  T part[kRowLanes];
  for (int l = 0; l < kRowLanes; ++l) part[l] = z[0];
  int j = 0;
  for (; j + kRowLanes <= n; j += kRowLanes)
    for (int l = 0; l < kRowLanes; ++l) part[l] = z[j + l] > part[l] ? z[j + l] : part[l];
  for (int l = 0; l < kRowLanes; ++l)
    if (j + l < n) part[l] = z[j + l] > part[l] ? z[j + l] : part[l];
  T m = part[0];
  for (int l = 1; l < kRowLanes; ++l) m = part[l] > m ? part[l] : m;
  return m;
}

template <typename T>
FASTMLP_HD int row_argmax(int n, const T* v) {
  int best = 0;
  for (int j = 1; j < n; ++j)
    if (v[j] > v[best]) best = j;
  return best;
}

// log(sum_j exp(z_j)), stable for any finite z.
template <typename T>
FASTMLP_HD T row_logsumexp(int n, const T* z) {
  const T m = row_max(n, z);
  T part[kRowLanes] = {};
  int j = 0;
  for (; j + kRowLanes <= n; j += kRowLanes)
    for (int l = 0; l < kRowLanes; ++l) part[l] += exp(z[j + l] - m);
  for (int l = 0; l < kRowLanes; ++l)
    if (j + l < n) part[l] += exp(z[j + l] - m);
  T s = T(0);
  for (int l = 0; l < kRowLanes; ++l) s += part[l];
  return m + log(s);
}

// Output activation of element j of a row (softmax needs the row's log-sum-exp).
template <typename T>
FASTMLP_HD T output_value(const ActivationSpec& act, T lse, T zj) {
  if (act.kind == Activation::Softmax) return exp(zj - lse);
  return activate(act.kind, T(act.param), zj);
}

// Binary cross-entropy of a logit z against target y: max(z,0) - z*y + log(1+e^-|z|).
template <typename T>
FASTMLP_HD T bce_with_logit(T z, T y) {
  return (z > T(0) ? z : T(0)) - z * y + log1p(exp(-fabs(z)));
}

// The weight of a row whose targets carry one in their last column (sample_weight: the row's
// loss, and so its gradient, is multiplied by it; the batch mean still divides by the row count,
// as Keras does), else 1.
template <typename T>
FASTMLP_HD T row_weight(const T* y_row, int y_cols, bool weighted) {
  return weighted ? y_row[y_cols - 1] : T(1);
}

// Keras's backend epsilon, inside the Poisson loss's logarithm when the output is not exp.
constexpr double kPoissonEpsilon = 1e-7;

struct RowResult {
  double loss;
  double metric;
};

// A loss of one output from its activated value a and target y: the value, dL/da and d2L/da2.
template <typename T>
struct Pointwise {
  T value, grad, curvature;
};

// The losses that act element by element on the activated output (regression losses, and
// Poisson on an output other than exp). param: Huber's delta.
template <typename T>
FASTMLP_HD Pointwise<T> pointwise_loss(Loss loss, T param, T a, T y) {
  const T d = a - y, ad = fabs(d);
  switch (loss) {
    case Loss::Huber:  // Keras / PyTorch: 0.5 d^2 inside delta, delta (|d| - delta / 2) outside
      if (ad <= param) return {T(0.5) * d * d, d, T(1)};
      return {param * (ad - T(0.5) * param), d > T(0) ? param : -param, T(0)};
    case Loss::MeanAbsoluteError:  // the subgradient 0 at d = 0, as PyTorch's sign
      return {ad, d > T(0) ? T(1) : (d < T(0) ? T(-1) : T(0)), T(0)};
    case Loss::LogCosh: {  // log(cosh d) = |d| + log(1 + e^(-2|d|)) - log 2, without overflow
      const T t = tanh(d);
      return {ad + log1p(exp(T(-2) * ad)) - T(0.69314718055994530942), t, T(1) - t * t};
    }
    case Loss::Poisson: {  // Keras's poisson: a - y log(a + eps)
      const T s = T(1) / (a + T(kPoissonEpsilon));
      return {a - y * log(a + T(kPoissonEpsilon)), T(1) - y * s, y * s * s};
    }
    default:  // MeanSquaredError
      return {d * d, T(2) * d, T(2)};
  }
}

// Loss of one sample and, if dz != nullptr, d(loss * scale)/dz written to dz.
//  z: n pre-activations of the output layer; y: targets (one class id, or n values).
//  scale is 1/batch for a batch mean. The output activation is fused in: cross-entropy
//  losses use log-sum-exp on the logits, BCE uses bce_with_logit, and MSE / hinge apply
//  the activation and chain through its derivative (softmax through its Jacobian).
template <typename T>
FASTMLP_HD RowResult loss_row(Loss loss, T loss_param, Metric metric, const ActivationSpec& out, int n, const T* z,
                              const T* y, T scale, T* dz) {
  RowResult r{0.0, 0.0};
  switch (loss) {
    case Loss::SparseCategoricalCrossentropy: {
      const int c = static_cast<int>(y[0]);
      const T lse = row_logsumexp(n, z);
      r.loss = double(lse - z[c]);
      if (dz)
        for (int j = 0; j < n; ++j) dz[j] = (exp(z[j] - lse) - (j == c ? T(1) : T(0))) * scale;
      if (metric == Metric::Accuracy) r.metric = row_argmax(n, z) == c ? 1.0 : 0.0;
      return r;
    }
    case Loss::CategoricalCrossentropy: {
      const T lse = row_logsumexp(n, z);
      T ysum = T(0), l = T(0);
      for (int j = 0; j < n; ++j) {
        ysum += y[j];
        l += y[j] * (lse - z[j]);
      }
      r.loss = double(l);
      if (dz)
        for (int j = 0; j < n; ++j) dz[j] = (exp(z[j] - lse) * ysum - y[j]) * scale;
      if (metric == Metric::Accuracy) r.metric = row_argmax(n, z) == row_argmax(n, y) ? 1.0 : 0.0;
      return r;
    }
    case Loss::BinaryCrossentropy: {
      // Keras convention: mean over the outputs of a sample.
      const T inv_n = T(1) / T(n);
      T l = T(0), hits = T(0);
      for (int j = 0; j < n; ++j) {
        l += bce_with_logit(z[j], y[j]);
        if (dz) dz[j] = (sigmoid(z[j]) - y[j]) * inv_n * scale;
        hits += ((z[j] > T(0)) == (y[j] > T(0.5))) ? T(1) : T(0);
      }
      r.loss = double(l * inv_n);
      if (metric == Metric::BinaryAccuracy) r.metric = double(hits * inv_n);
      return r;
    }
    case Loss::Poisson: {
      if (out.kind != Activation::Exponential) break;  // on another output: the general form below
      // The log link fused in (PyTorch's PoissonNLLLoss(log_input=True)): a = e^z, so
      // a - y log a = e^z - y z, mean over the outputs.
      const T inv_n = T(1) / T(n);
      T l = T(0), abs_err = T(0);
      for (int j = 0; j < n; ++j) {
        const T a = exp(z[j]);
        l += a - y[j] * z[j];
        abs_err += fabs(a - y[j]);
        if (dz) dz[j] = (a - y[j]) * inv_n * scale;
      }
      r.loss = double(l * inv_n);
      if (metric == Metric::MeanAbsoluteError) r.metric = double(abs_err * inv_n);
      return r;
    }
    default: break;
  }
  // The other losses act on the activated output a = f(z).
  const T lse = out.kind == Activation::Softmax ? row_logsumexp(n, z) : T(0);
  if (loss != Loss::MulticlassHinge) {  // element-wise: mean over the outputs of pointwise_loss
    const T inv_n = T(1) / T(n);
    T l = T(0), abs_err = T(0);
    for (int j = 0; j < n; ++j) {
      const T a = output_value(out, lse, z[j]);
      const Pointwise<T> p = pointwise_loss(loss, loss_param, a, y[j]);
      l += p.value;
      abs_err += fabs(a - y[j]);
      if (dz) dz[j] = p.grad * inv_n * scale;  // dL/da for now
    }
    r.loss = double(l * inv_n);
    if (metric == Metric::MeanAbsoluteError) r.metric = double(abs_err * inv_n);
  } else {  // MulticlassHinge: sum_{j != c} max(0, a_j - a_c + 1)
    const int c = static_cast<int>(y[0]);
    const T ac = output_value(out, lse, z[c]);
    T l = T(0), active = T(0);
    for (int j = 0; j < n; ++j) {
      if (j == c) continue;
      const T margin = output_value(out, lse, z[j]) - ac + T(1);
      const bool on = margin > T(0);
      if (on) {
        l += margin;
        active += T(1);
      }
      if (dz) dz[j] = on ? scale : T(0);
    }
    if (dz) dz[c] = -active * scale;
    r.loss = double(l);
    if (metric == Metric::Accuracy) r.metric = row_argmax(n, z) == c ? 1.0 : 0.0;
  }
  if (dz) {  // chain dL/da through the output activation
    if (out.kind == Activation::Softmax) {
      T dot = T(0);
      for (int j = 0; j < n; ++j) dot += dz[j] * exp(z[j] - lse);
      for (int j = 0; j < n; ++j) dz[j] = exp(z[j] - lse) * (dz[j] - dot);
    } else {
      for (int j = 0; j < n; ++j)
        dz[j] *= activation_grad(out.kind, T(out.param), z[j], activate(out.kind, T(out.param), z[j]));
    }
  }
  return r;
}

// ------------------------------------------------------------------ further metrics
// The index of the largest of Keras's AUC thresholds below score s: thresholds are -eps,
// 1/(B-1), ..., (B-2)/(B-1), 1+eps for B = kAucBins, so a score counts as positive at threshold i
// exactly when its bin is >= i.
template <typename T>
FASTMLP_HD int auc_bin(T s) {
  if (!(s > T(0))) return 0;
  if (s > T(1)) return s > T(1) + T(1e-7) ? kAucBins - 1 : kAucBins - 2;
  const int i = static_cast<int>(ceil(s * T(kAucBins - 1))) - 1;
  return i < 0 ? 0 : (i > kAucBins - 2 ? kAucBins - 2 : i);
}

// One row's contribution to metric m: add(slot, value) for each slot it touches. Scores are
// probabilities for the cross-entropy losses (sigmoid or softmax of the logits, whatever the
// output layer says, so from_logits models score alike) and the activated output otherwise; a
// class-id target stands for its one-hot row.
template <typename T, typename Add>
FASTMLP_HD void metric_row(const MetricSpec& m, Loss loss, const ActivationSpec& out, bool class_ids, int n,
                           const T* z, const T* y, Add& add) {
  const bool ce = loss == Loss::SparseCategoricalCrossentropy || loss == Loss::CategoricalCrossentropy;
  const bool bce = loss == Loss::BinaryCrossentropy;
  const bool binary_accuracy = m.kind == MetricKind::Accuracy && !class_ids && (bce || n == 1);
  // Scores that rise strictly with the logits (the cross-entropies' probabilities, softmax,
  // sigmoid and linear outputs) are ranked by the logits: accuracy and top-k then take no exp
  // (a 1000-class top-k took 3 times as long as the whole evaluate without it), and no two
  // scores tie because their floats rounded alike.
  const bool ranked_by_logits = ce || bce || out.kind == Activation::Softmax || out.kind == Activation::Sigmoid ||
                                out.kind == Activation::Linear;
  const bool ranks_only = ranked_by_logits && (m.kind == MetricKind::TopK ||
                                               (m.kind == MetricKind::Accuracy && !binary_accuracy));
  const T lse = (ce || out.kind == Activation::Softmax) && !ranks_only ? row_logsumexp(n, z) : T(0);
  const int c = class_ids ? static_cast<int>(y[0]) : -1;
  auto score = [&](int j) -> T {
    if (bce) return sigmoid(z[j]);
    if (ce) return exp(z[j] - lse);
    return output_value(out, lse, z[j]);
  };
  auto target = [&](int j) -> T { return class_ids ? (j == c ? T(1) : T(0)) : y[j]; };
  auto argmax_score = [&]() {  // each score once (an exp each for the cross-entropies)
    int best = 0;
    T top = score(0);
    for (int j = 1; j < n; ++j) {
      const T s = score(j);
      if (s > top) {
        top = s;
        best = j;
      }
    }
    return best;
  };
  const int cls = class_ids ? c : row_argmax(n, y);
  switch (m.kind) {
    case MetricKind::Accuracy:
      if (binary_accuracy) {  // binary outputs: each thresholded at 0.5
        T hits = T(0);
        for (int j = 0; j < n; ++j) hits += ((score(j) > T(0.5)) == (y[j] > T(0.5))) ? T(1) : T(0);
        add(m.slot, double(hits / T(n)));
      } else {
        add(m.slot, (ranks_only ? row_argmax(n, z) : argmax_score()) == cls ? 1.0 : 0.0);
      }
      return;
    case MetricKind::TopK: {  // hit when fewer than k classes score above the true one
      int above = 0;
      if (ranks_only) {
        const T zc = z[cls];
        for (int j = 0; j < n; ++j) above += z[j] > zc ? 1 : 0;
      } else {
        const T sc = score(cls);
        for (int j = 0; j < n; ++j) above += score(j) > sc ? 1 : 0;
      }
      add(m.slot, above < m.param ? 1.0 : 0.0);
      return;
    }
    case MetricKind::MeanAbsoluteError:
    case MetricKind::MeanSquaredError: {
      T sum = T(0);
      for (int j = 0; j < n; ++j) {
        const T d = score(j) - target(j);
        sum += m.kind == MetricKind::MeanAbsoluteError ? fabs(d) : d * d;
      }
      add(m.slot, double(sum / T(n)));
      return;
    }
    case MetricKind::Precision:
    case MetricKind::Recall:
      for (int j = 0; j < n; ++j) {
        const bool predicted = score(j) > T(0.5), actual = target(j) > T(0.5);
        if (predicted && actual) add(m.slot, 1.0);
        if (m.kind == MetricKind::Precision ? predicted : actual) add(m.slot + 1, 1.0);
      }
      return;
    case MetricKind::Auc:
      for (int j = 0; j < n; ++j) add(m.slot + (target(j) > T(0.5) ? 0 : kAucBins) + auc_bin(score(j)), 1.0);
      return;
  }
}

// One sample's (loss's Hessian w.r.t. z) times rz, times scale, into rdz: the R-operator of
// loss_row's gradient. Every Hessian here is diagonal except softmax cross-entropy's
// ysum * (diag(p) - p p^T). MSE and hinge on a softmax output are not handled (the engine refuses
// them); hinge's own term is 0 (piecewise linear), only its output activation's curvature remains.
template <typename T>
FASTMLP_HD void loss_row_hessian_vector(Loss loss, T loss_param, const ActivationSpec& out, int n, const T* z, const T* y,
                                        const T* rz, T scale, T* rdz) {
  switch (loss) {
    case Loss::SparseCategoricalCrossentropy:
    case Loss::CategoricalCrossentropy: {
      T ysum = T(1);
      if (loss == Loss::CategoricalCrossentropy) {
        ysum = T(0);
        for (int j = 0; j < n; ++j) ysum += y[j];
      }
      const T lse = row_logsumexp(n, z);
      T p_rz = T(0);
      for (int j = 0; j < n; ++j) p_rz += exp(z[j] - lse) * rz[j];
      for (int j = 0; j < n; ++j) rdz[j] = ysum * exp(z[j] - lse) * (rz[j] - p_rz) * scale;
      return;
    }
    case Loss::BinaryCrossentropy: {
      const T inv_n = T(1) / T(n);
      for (int j = 0; j < n; ++j) {
        const T p = sigmoid(z[j]);
        rdz[j] = p * (T(1) - p) * inv_n * rz[j] * scale;
      }
      return;
    }
    case Loss::Poisson:
      if (out.kind == Activation::Exponential) {  // e^z - y z fused: e^z / n
        for (int j = 0; j < n; ++j) rdz[j] = exp(z[j]) / T(n) * rz[j] * scale;
        return;
      }
      [[fallthrough]];
    case Loss::MeanSquaredError:
    case Loss::Huber:
    case Loss::MeanAbsoluteError:
    case Loss::LogCosh: {  // (1/n) (L''(a) f'^2 + L'(a) f'') per element, L = pointwise_loss
      const T inv_n = T(1) / T(n), param = T(out.param);
      for (int j = 0; j < n; ++j) {
        const T a = activate(out.kind, param, z[j]);
        const T d1 = activation_grad(out.kind, param, z[j], a);
        const T d2 = activation_second_grad(out.kind, param, z[j], a);
        const Pointwise<T> p = pointwise_loss(loss, loss_param, a, y[j]);
        rdz[j] = inv_n * (p.curvature * d1 * d1 + p.grad * d2) * rz[j] * scale;
      }
      return;
    }
    case Loss::MulticlassHinge: {  // sum over active margins of +-f''(z_j)
      const int c = static_cast<int>(y[0]);
      const T param = T(out.param);
      const T ac = activate(out.kind, param, z[c]);
      T active = T(0);
      for (int j = 0; j < n; ++j) {
        const T a = activate(out.kind, param, z[j]);
        const bool on = j != c && a - ac + T(1) > T(0);
        active += on ? T(1) : T(0);
        rdz[j] = on ? activation_second_grad(out.kind, param, z[j], a) * rz[j] * scale : T(0);
      }
      rdz[c] = -active * activation_second_grad(out.kind, param, z[c], ac) * rz[c] * scale;
      return;
    }
  }
}

// -------------------------------------------------------------------- dropout
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", 2011): a
// counter-based generator, so each mask element is a pure function of (seed, step, element),
// the same on every backend, in any order, and in every replay of a captured step.
FASTMLP_HD uint32_t mulhi32(uint32_t a, uint32_t b) { return uint32_t((uint64_t(a) * b) >> 32); }

// The four output words of Philox4x32-10 with key (2 words) = key and counter (4 words) =
// (counter_lo, counter_hi), each 64 bits, low word first.
FASTMLP_HD void philox4x32_10(uint64_t key, uint64_t counter_lo, uint64_t counter_hi, uint32_t& w0, uint32_t& w1,
                              uint32_t& w2, uint32_t& w3) {
  uint32_t c0 = uint32_t(counter_lo), c1 = uint32_t(counter_lo >> 32);
  uint32_t c2 = uint32_t(counter_hi), c3 = uint32_t(counter_hi >> 32);
  uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mulhi32(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = mulhi32(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  w0 = c0;
  w1 = c1;
  w2 = c2;
  w3 = c3;
}

// Which Philox word decides dropout's `element` (row * cols + col of the global batch). Each
// call gives four words, and all four are used: the elements come in blocks of 64, and block b's
// element 16 k + l takes word k of counter 16 b + l. So 16 consecutive counters (one AVX-512
// vector of them on the CPU) decide 64 consecutive elements in order, and the CPU stores them
// without shuffling (elementwise.h). With a call per element, Dropout(0.2) after each hidden
// layer of 784-512-512-10 (Adam, batch 128) added 55% to the CPU's step; now it adds 15%.
constexpr int64_t kDropoutBlock = 64, kDropoutCounters = 16;
FASTMLP_HD uint64_t dropout_counter(int64_t element) {
  return (uint64_t(element) / kDropoutBlock) * kDropoutCounters + uint64_t(element) % kDropoutCounters;
}
FASTMLP_HD int dropout_word(int64_t element) { return int(uint64_t(element) / kDropoutCounters % 4); }

// An element is kept when its word is at least this: probability 1 - rate, compared in integers
// so every backend decides alike.
FASTMLP_HD uint32_t dropout_threshold(double rate) {
  return uint32_t(rate * 4294967296.0);  // rate < 1, so this is below 2^32
}

// Whether dropout keeps `element` at optimizer step `step` (the element's whole draw; the CPU
// draws a block at a time, with the same result).
FASTMLP_HD bool dropout_keep(uint64_t seed, int64_t step, int64_t element, double rate) {
  uint32_t w0, w1, w2, w3;
  philox4x32_10(seed, dropout_counter(element), uint64_t(step), w0, w1, w2, w3);
  const int k = dropout_word(element);
  const uint32_t word = k == 0 ? w0 : k == 1 ? w1 : k == 2 ? w2 : w3;  // selects: no indexed local array on a GPU
  return word >= dropout_threshold(rate);
}

template <typename T>
FASTMLP_HD T dropout_scale(double rate) {
  return T(1.0 / (1.0 - rate));
}

// -------------------------------------------------------------- normalization
// Batch- and layer normalization share these: n values of one group (a column of the batch, or
// a row's features) with mean m and biased variance v become xhat = (x - m) * inv_std,
// y = gamma * xhat + beta.
template <typename T>
FASTMLP_HD T normalize_inv_std(T var, T epsilon) {
  return T(1) / sqrt(var + epsilon);
}

// dL/dx of one element of a group of n, given dxhat = dL/dy * gamma and the group's sums of
// dxhat and dxhat * xhat: (n dxhat - sum dxhat - xhat sum(dxhat xhat)) * inv_std / n.
// For n = 1 (a batch of one row) xhat = 0 and this is 0: the output does not depend on x.
template <typename T>
FASTMLP_HD T normalize_input_grad(T dxhat, T xhat, T inv_std, T n, T sum_dxhat, T sum_dxhat_xhat) {
  return (n * dxhat - sum_dxhat - xhat * sum_dxhat_xhat) * inv_std / n;
}

// BatchNormalization's moving statistics (Keras): moving = momentum * moving + (1 - momentum) * batch.
template <typename T>
FASTMLP_HD T moving_average(T moving, T batch_value, double momentum) {
  return T(momentum) * moving + T(1.0 - momentum) * batch_value;
}

// ----------------------------------------------------------- regularization
// Keras's L1L2: the penalty l1 * |w| + l2 * w^2 is added to the loss. The l2-only forms let a
// loop without L1 skip the sign, and equal the full ones with l1 = 0.
template <typename T>
FASTMLP_HD T l2_regularization_grad(T w, T l2) {
  return T(2) * l2 * w;
}

template <typename T>
FASTMLP_HD T regularization_grad(T w, T l1, T l2) {
  // sign(w) as arithmetic, not branches: the CPU's fused update loop stays vectorizable.
  const T sign = T(w > T(0)) - T(w < T(0));
  return l2_regularization_grad(w, l2) + l1 * sign;
}

// The factor by which a plain SGD step scales a weight whose data gradient is zero under L2:
// w - lr * l2_regularization_grad(w, l2) = (1 - 2 lr l2) w. The CPU backend applies a run of
// such steps at once (csrc/cpu/deferred_decay.h).
FASTMLP_HD double l2_sgd_decay_factor(double lr, double l2) { return 1.0 - 2.0 * lr * l2; }

// |V - a x dz^T|^2 = |V|^2 - 2 a (x^T V) . dz + a^2 |x|^2 |dz|^2: the sum of squares of a kernel
// after a one-row SGD step of rate a, from the one-row product x^T V the forward pass computed,
// without a pass over V (csrc/cpu/deferred_decay.h keeps the L2 penalty so).
FASTMLP_HD double squares_after_rank_one_step(double squares, double a, double xv_dot_dz, double x_squares,
                                              double dz_squares) {
  return squares - 2.0 * a * xv_dot_dz + a * a * x_squares * dz_squares;
}

template <typename T>
FASTMLP_HD T l2_regularization_penalty(T w, T l2) {
  return l2 * w * w;
}

template <typename T>
FASTMLP_HD T regularization_penalty(T w, T l1, T l2) {
  return l2_regularization_penalty(w, l2) + l1 * fabs(w);
}

// The penalty of a block of weights from its sums of |w| and w^2: the sum of
// regularization_penalty over the block, with the multiplies by l1 and l2 once per block (the
// CPU's update loop is bound by its arithmetic per weight at one-row batches).
template <typename T>
FASTMLP_HD T regularization_penalty_of_sums(T sum_abs, T sum_squares, T l1, T l2) {
  return l2 * sum_squares + l1 * sum_abs;
}

// ------------------------------------------------------ learning-rate schedule
// Learning rate for the update with 0-based index t.
FASTMLP_HD double scheduled_lr(const Schedule& s, double lr, int64_t t) {
  const double td = static_cast<double>(t);
  double out = lr;
  switch (s.kind) {
    case ScheduleKind::StepDecay: out = lr * pow(s.rate, floor(td / s.decay_steps)); break;
    case ScheduleKind::ExponentialDecay: {
      const double p = td / s.decay_steps;
      out = lr * pow(s.rate, s.staircase ? floor(p) : p);
      break;
    }
    case ScheduleKind::InverseTimeDecay: out = lr / (1.0 + s.rate * td / s.decay_steps); break;
    case ScheduleKind::Cosine: {
      const double p = (td < s.decay_steps ? td : s.decay_steps) / s.decay_steps;
      out = s.min_lr + (lr - s.min_lr) * 0.5 * (1.0 + cos(3.14159265358979323846 * p));
      break;
    }
    default: break;
  }
  if (t < s.warmup_steps) out *= (td + 1.0) / static_cast<double>(s.warmup_steps);
  return out;
}

// ------------------------------------------------------------------ optimizers
// Scalars shared by all parameters in one update, computed once per step in double so the
// per-element update does no pow, sqrt of a scalar or division by a scalar.
struct StepScalars {
  double lr;         // scheduled learning rate
  double step_size;  // Adam: lr / (1 - beta1^t)
  double bc1;        // 1 - beta1^t (RAdam, LAMB)
  double bc2;        // 1 - beta2^t (NAdam, LAMB)
  double sqrt_bc2;   // Adam, RAdam: sqrt(1 - beta2^t)
  double clr;        // Adagrad's decayed rate lr / (1 + (t-1) * lr_decay)
  double decay;      // AdamW and decoupled weight decay: 1 - lr * weight_decay
  bool first;        // first update: SGD momentum buffers start at g
  double mu;              // NAdam: this step's momentum coefficient mu_t
  double nadam_grad;      // NAdam: lr * (1 - mu_t) / (1 - mu_1...mu_t)
  double nadam_momentum;  // NAdam: lr * mu_{t+1} / (1 - mu_1...mu_{t+1})
  bool radam_rectified;   // RAdam: rho_t > 5, the variance is tractable
  double radam_rect;      // RAdam: the rectification term r_t
};

// NAdam's momentum coefficient for step t (1-based): beta1 * (1 - 0.5 * 0.96^(t * psi)).
FASTMLP_HD double nadam_mu(const OptimizerConfig& c, double t) {
  return c.beta1 * (1.0 - 0.5 * pow(0.96, t * c.momentum_decay));
}

// The product mu_1...mu_steps (TrainCounters::mu_product after `steps` updates), for an engine
// whose step count is set rather than counted (a loaded model, a new config).
FASTMLP_HD double nadam_mu_product(const OptimizerConfig& c, int64_t steps) {
  double product = 1.0;
  for (int64_t t = 1; t <= steps && product != 0.0; ++t) product *= nadam_mu(c, static_cast<double>(t));
  return product;
}

// mu_product: the product mu_1...mu_{t0} of the steps already taken (TrainCounters::mu_product).
FASTMLP_HD StepScalars step_scalars(const OptimizerConfig& c, int64_t t0, double mu_product = 1.0) {
  StepScalars s;
  s.lr = scheduled_lr(c.schedule, c.lr, t0);
  const double t = static_cast<double>(t0 + 1);  // torch counts steps from 1
  s.bc1 = 1.0 - pow(c.beta1, t);
  s.bc2 = 1.0 - pow(c.beta2, t);
  s.step_size = s.lr / s.bc1;
  s.sqrt_bc2 = sqrt(s.bc2);
  s.clr = s.lr / (1.0 + (t - 1.0) * c.lr_decay);
  s.decay = 1.0 - s.lr * c.weight_decay;
  s.first = t0 == 0;
  s.mu = nadam_mu(c, t);
  const double product = mu_product * s.mu, product_next = product * nadam_mu(c, t + 1.0);
  s.nadam_grad = s.lr * (1.0 - s.mu) / (1.0 - product);
  s.nadam_momentum = s.lr * nadam_mu(c, t + 1.0) / (1.0 - product_next);
  const double rho_inf = 2.0 / (1.0 - c.beta2) - 1.0;
  const double rho_t = rho_inf - 2.0 * t * pow(c.beta2, t) / s.bc2;
  s.radam_rectified = rho_t > 5.0;
  s.radam_rect = s.radam_rectified
                     ? sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                     : 1.0;
  return s;
}

// Whether weight decay shrinks the parameter (p *= 1 - lr * wd) instead of adding wd * p to
// the gradient: AdamW always, NAdam and RAdam when asked; LAMB puts it in its direction.
FASTMLP_HD bool decoupled_decay(const OptimizerConfig& c) {
  return c.kind == OptimizerKind::AdamW ||
         (c.decoupled_weight_decay && (c.kind == OptimizerKind::NAdam || c.kind == OptimizerKind::RAdam));
}

// The gradient the optimizer sees: data gradient plus regularizer g, clipped to
// [-clipvalue, clipvalue] and scaled by the segment's norm clipping (grad_scale, 1 when off).
template <typename T>
FASTMLP_HD T clipped_gradient(const OptimizerConfig& c, T g, T grad_scale) {
  if (c.clipvalue > 0.0) {
    const T v = T(c.clipvalue);
    g = g > v ? v : (g < -v ? -v : g);
  }
  return g * grad_scale;
}

// Norm clipping's factor for a gradient of norm `norm`: Keras's clip_by_norm per segment
// (clipnorm / max(norm, clipnorm)), torch's clip_grad_norm_ over all (max / (norm + 1e-6), at most 1).
FASTMLP_HD double clip_scale(const OptimizerConfig& c, double segment_norm, double global_norm) {
  if (c.clipnorm > 0.0) return c.clipnorm / (segment_norm > c.clipnorm ? segment_norm : c.clipnorm);
  if (c.global_clipnorm > 0.0) {
    const double f = c.global_clipnorm / (global_norm + 1e-6);
    return f < 1.0 ? f : 1.0;
  }
  return 1.0;
}

// LAMB's direction for one parameter from its moments m, v (already updated this step):
// m_hat / (sqrt(v_hat) + eps) + weight_decay * p.
template <typename T>
FASTMLP_HD T lamb_direction(const OptimizerConfig& c, const StepScalars& s, T p, T m, T v) {
  return (m / T(s.bc1)) / (sqrt(v / T(s.bc2)) + T(c.eps)) + T(c.weight_decay) * p;
}

// LAMB's trust ratio of a segment: ||p|| / ||direction||, 1 when either is 0.
FASTMLP_HD double lamb_trust(double p_norm, double direction_norm) {
  return p_norm > 0.0 && direction_norm > 0.0 ? p_norm / direction_norm : 1.0;
}

// What the norm passes found for segment i: the factor of norm clipping and LAMB's trust ratio.
// norms is the scratch of Backend::optimizer_step: kSegmentNormSlots sums of squares per segment
// (gradient, parameters, LAMB direction), laid out slot by slot, then the global gradient sum.
struct SegmentScale {
  double grad = 1.0;
  double trust = 1.0;
};
FASTMLP_HD SegmentScale segment_scale(const OptimizerConfig& c, const double* norms, int n_segments, int i) {
  SegmentScale out;
  if (norms == nullptr) return out;
  if (c.clipnorm > 0.0 || c.global_clipnorm > 0.0)
    out.grad = clip_scale(c, sqrt(norms[i]), sqrt(norms[kSegmentNormSlots * n_segments]));
  if (c.kind == OptimizerKind::LAMB) out.trust = lamb_trust(sqrt(norms[n_segments + i]), sqrt(norms[2 * n_segments + i]));
  return out;
}

// One parameter's update. g already holds the data gradient plus the layer regularizer, clipped;
// st0..st2 are this parameter's optimizer-state slots (unused ones may alias st0); trust is
// LAMB's trust ratio of the parameter's segment (1 for the others).
// Formulas are torch.optim's (see docs/formulas.md).
template <typename T>
FASTMLP_HD void optimizer_update(const OptimizerConfig& c, const StepScalars& s, T& p, T g, T& st0, T& st1,
                                 T& st2, T trust = T(1)) {
  const T lr = T(s.lr);
  if (c.weight_decay != 0.0) {
    if (decoupled_decay(c)) p *= T(s.decay);
    else if (c.kind != OptimizerKind::LAMB) g += T(c.weight_decay) * p;
  }
  switch (c.kind) {
    case OptimizerKind::SGD: {
      if (c.momentum != 0.0) {
        T& buf = st0;
        buf = s.first ? g : T(c.momentum) * buf + T(1.0 - c.dampening) * g;
        g = c.nesterov ? g + T(c.momentum) * buf : buf;
      }
      p -= lr * g;
      return;
    }
    case OptimizerKind::Adagrad: {
      T& sum = st0;
      sum += g * g;
      p -= T(s.clr) * g / (sqrt(sum) + T(c.eps));
      return;
    }
    case OptimizerKind::RMSprop: {
      T& sq = st0;
      sq = T(c.alpha) * sq + T(1.0 - c.alpha) * g * g;
      T avg;
      if (c.centered) {
        T& gavg = st1;
        gavg = T(c.alpha) * gavg + T(1.0 - c.alpha) * g;
        avg = sqrt(sq - gavg * gavg) + T(c.eps);
      } else {
        avg = sqrt(sq) + T(c.eps);
      }
      if (c.momentum > 0.0) {
        T& buf = c.centered ? st2 : st1;
        buf = T(c.momentum) * buf + g / avg;
        p -= lr * buf;
      } else {
        p -= lr * g / avg;
      }
      return;
    }
    case OptimizerKind::Adadelta: {
      T& sq = st0;
      T& acc_delta = st1;
      sq = T(c.rho) * sq + T(1.0 - c.rho) * g * g;
      const T delta = sqrt(acc_delta + T(c.eps)) / sqrt(sq + T(c.eps)) * g;
      acc_delta = T(c.rho) * acc_delta + T(1.0 - c.rho) * delta * delta;
      p -= lr * delta;
      return;
    }
    case OptimizerKind::Adam:
    case OptimizerKind::AdamW: {
      T& m = st0;
      T& v = st1;
      m = T(c.beta1) * m + T(1.0 - c.beta1) * g;
      v = T(c.beta2) * v + T(1.0 - c.beta2) * g * g;
      T vhat = v;
      if (c.amsgrad) {
        st2 = st2 > v ? st2 : v;
        vhat = st2;
      }
      const T denom = sqrt(vhat) / T(s.sqrt_bc2) + T(c.eps);
      p -= T(s.step_size) * m / denom;
      return;
    }
    case OptimizerKind::NAdam: {  // torch.optim.NAdam: Dozat's Nesterov-momentum Adam
      T& m = st0;
      T& v = st1;
      m = T(c.beta1) * m + T(1.0 - c.beta1) * g;
      v = T(c.beta2) * v + T(1.0 - c.beta2) * g * g;
      const T denom = sqrt(v / T(s.bc2)) + T(c.eps);
      p -= T(s.nadam_grad) * g / denom;
      p -= T(s.nadam_momentum) * m / denom;
      return;
    }
    case OptimizerKind::RAdam: {  // torch.optim.RAdam: Adam with the variance rectified
      T& m = st0;
      T& v = st1;
      m = T(c.beta1) * m + T(1.0 - c.beta1) * g;
      v = T(c.beta2) * v + T(1.0 - c.beta2) * g * g;
      const T m_hat = m / T(s.bc1);
      if (s.radam_rectified)
        p -= m_hat * lr * (T(s.sqrt_bc2) / (sqrt(v) + T(c.eps))) * T(s.radam_rect);
      else
        p -= m_hat * lr;
      return;
    }
    case OptimizerKind::LAMB: {  // You et al. 2019, Algorithm 2, trust ratio per segment
      T& m = st0;
      T& v = st1;
      m = T(c.beta1) * m + T(1.0 - c.beta1) * g;
      v = T(c.beta2) * v + T(1.0 - c.beta2) * g * g;
      p -= lr * trust * lamb_direction(c, s, p, m, v);
      return;
    }
  }
}

// optimizer_update, except that a parameter the update would make NaN or Inf (a learning rate
// far too large) keeps its value and state; returns false then, so training can stop with
// finite weights. Callers pass locals for the slots the optimizer does not own.
template <typename T>
FASTMLP_HD bool guarded_update(const OptimizerConfig& c, const StepScalars& s, T& p, T g, T& st0, T& st1, T& st2,
                               T trust = T(1)) {
  T np = p, n0 = st0, n1 = st1, n2 = st2;
  optimizer_update(c, s, np, g, n0, n1, n2, trust);
  const bool ok = isfinite(np);
  st2 = ok ? n2 : st2;
  st1 = ok ? n1 : st1;
  st0 = ok ? n0 : st0;
  p = ok ? np : p;
  return ok;
}

}  // namespace math
}  // namespace fastmlp
