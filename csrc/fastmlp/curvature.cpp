// Exact Hessian-vector products (Pearlmutter's R-operator, "Fast exact multiplication by the
// Hessian", 1994): after the ordinary forward and backward passes, a forward pass carries the
// directional derivatives R{z} = d z(theta + r v)/dr at r = 0 of every pre-activation, the loss
// turns R{z_out} into R{dL/dz_out} through its Hessian, and a backward pass carries R{dL/dz} down,
// giving R{dL/dtheta} = H v. Built from backend GEMMs and two fused element-wise passes, so CPU
// and CUDA share it. Engine members, defined here (see network.cpp for the other passes).
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "fastmlp/engine.h"
#include "fastmlp/math.h"

namespace fastmlp {
namespace {

const char* layer_name(LayerKind kind) {
  switch (kind) {
    case LayerKind::Dense: return "Dense";
    case LayerKind::Dropout: return "Dropout";
    case LayerKind::BatchNormalization: return "BatchNormalization";
    case LayerKind::LayerNormalization: return "LayerNormalization";
    case LayerKind::Activation: return "Activation";
  }
  return "unknown";
}

}  // namespace

template <typename T>
double Engine<T>::hessian_vector_product(const Dataset<T>& data, int64_t k_vectors, const T* v_host, T* hv_host) {
  auto held = lock();
  for (const Op& op : ops_)
    if (op.kind == LayerKind::Activation && math::grad_needs_input(op.act.kind))
      throw std::invalid_argument("Hessian-vector products do not support GELU or SiLU in hidden layers (only as the "
                                  "output activation)");
    else if (op.kind != LayerKind::Dense)
      throw std::invalid_argument("Hessian-vector products support models of Dense layers (activations included); "
                                  "this one has a " + std::string(layer_name(op.kind)) + " layer");
  if (logits_activated_)
    throw std::invalid_argument("Hessian-vector products need the output activation on the last Dense layer "
                                "itself, not in a separate Activation layer after it");
  const bool on_logits = spec_.loss == Loss::SparseCategoricalCrossentropy ||
                         spec_.loss == Loss::CategoricalCrossentropy || spec_.loss == Loss::BinaryCrossentropy;
  if (!on_logits && out_act_.kind == Activation::Softmax)
    throw std::invalid_argument("Hessian-vector products of a loss on a softmax output other than cross-entropy "
                                "(mse, hinge, poisson, huber, mae, log_cosh) are not supported");
  if (data.streamed)
    throw std::invalid_argument("Hessian-vector products need the data in backend memory (it was streamed)");
  if (!data.has_targets()) throw std::invalid_argument("Hessian-vector products need targets");
  // The ordinary passes: activations a_i in outputs_, dL/dz_i in dz_, the loss in the counters.
  const TrainCounters counters = gradients_of_whole(data, eval_counters_);
  Backend<T>* be = backend_.get();
  const int rows = int(data.rows);
  const size_t L = ops_.size();
  int widest = spec_.input_dim;
  int64_t largest_kernel = 0;
  for (const Op& op : ops_) {
    widest = std::max(widest, op.out);
    largest_kernel = std::max(largest_kernel, int64_t(op.in) * op.out);
  }
  const size_t p_bytes = sizeof(T) * num_params_;
  BackendBuffer<T> V(be, p_bytes), HV(be, p_bytes);
  BackendBuffer<T> tmp(be, sizeof(T) * std::max<int64_t>(int64_t(rows) * widest, largest_kernel));
  BackendBuffer<T> G(be, sizeof(T) * size_t(rows) * widest), RG(be, sizeof(T) * size_t(rows) * widest);
  std::vector<BackendBuffer<T>> Rz, Ra, Rd;  // R{z_i}, R{a_i} and R{dL/dz_i}, rows x out_i each
  for (const Op& op : ops_) {
    const size_t bytes = sizeof(T) * size_t(rows) * op.out;
    Rz.emplace_back(be, bytes);
    Ra.emplace_back(be, bytes);
    Rd.emplace_back(be, bytes);
  }
  // The ordinary passes above serve every direction: only the R-passes run per vector.
  for (int64_t j = 0; j < k_vectors; ++j) {
  const T* v_j = v_host + j * num_params_;
  T* hv_j = hv_host + j * num_params_;
  be->to_backend(V.get(), v_j, p_bytes);
  const T* P = params_.get();
  T* t = tmp.get();
  // Forward: R{z_i} = R{x_i} W_i + x_i V_W + V_b, R{a_i} = act'(a_i) R{z_i}.
  for (size_t i = 0; i < L; ++i) {
    const Op& op = ops_[i];
    const T* x = i ? outputs_[i - 1] : data.x;
    const int64_t cells = int64_t(rows) * op.out;
    // x V_W + V_b by the layer's own forward (the bias added in full precision, as in training).
    be->dense_forward(rows, op.in, op.out, x, V.get() + op.params.w, V.get() + op.params.b, ActivationSpec{},
                      Rz[i].get(), nullptr);
    if (i > 0) {
      be->matmul(false, false, rows, op.out, op.in, Ra[i - 1].get(), P + op.params.w, t);
      be->axpy(cells, T(1), t, Rz[i].get());
    }
    if (i + 1 < L)
      be->activation_backward(rows, op.out, outputs_[i], outputs_[i], Rz[i].get(), op.act, ActivationSpec{},
                              Ra[i].get());
  }
  // The loss: R{dL/dz_out} = H_z(loss) R{z_out} / rows.
  be->loss_hessian_vector(rows, n_out(), logits(), data.y, data.y_cols, data.weighted, spec_.loss, spec_.loss_param, out_act_, Rz[L - 1].get(),
                          Rd[L - 1].get());
  // Backward: R{dW_i} = R{x_i}^T d_i + x_i^T R{d_i}, R{db_i} = column sums of R{d_i}, and with
  // g = d_i W_i^T: R{d_{i-1}} = (R{d_i} W_i^T + d_i V_W^T) act'(a_{i-1}) + g act''(a_{i-1}) R{z_{i-1}}.
  for (size_t i = L; i-- > 0;) {
    const Op& op = ops_[i];
    const T* x = i ? outputs_[i - 1] : data.x;
    T* hw = HV.get() + op.params.w;
    // x^T R{d_i} and the column sums of R{d_i} by the layer's own weight-gradient pass.
    be->dense_backward(rows, op.in, op.out, x, nullptr, P + op.params.w, Rd[i].get(), hw, HV.get() + op.params.b,
                       nullptr, ActivationSpec{}, nullptr);
    if (i > 0) {
      be->matmul(true, false, op.in, op.out, rows, Ra[i - 1].get(), dz_[i].get(), t);
      be->axpy(int64_t(op.in) * op.out, T(1), t, hw);
    }
    if (i == 0) break;
    const int64_t cells = int64_t(rows) * op.in;
    be->matmul(false, true, rows, op.in, op.out, dz_[i].get(), P + op.params.w, G.get());
    be->matmul(false, true, rows, op.in, op.out, Rd[i].get(), P + op.params.w, RG.get());
    be->matmul(false, true, rows, op.in, op.out, dz_[i].get(), V.get() + op.params.w, t);
    be->axpy(cells, T(1), t, RG.get());
    be->activation_second_order(cells, outputs_[i - 1], G.get(), RG.get(), Rz[i - 1].get(), ops_[i - 1].act,
                                Rd[i - 1].get());
  }
  be->to_host(hv_j, HV.get(), p_bytes);
  // The penalty's Hessian: 2 l2 on the kernels (L1's is 0 wherever it is defined).
  for (const ParamSegment& s : segments_)
    if (s.l2 != 0.0)
      for (int64_t k = s.offset; k < s.offset + s.size; ++k) hv_j[k] += T(2.0 * s.l2) * v_j[k];
  }
  return counters.loss_sum / double(data.rows) + regularization_penalty();
}

template double Engine<float>::hessian_vector_product(const Dataset<float>&, int64_t, const float*, float*);
template double Engine<double>::hessian_vector_product(const Dataset<double>&, int64_t, const double*, double*);

}  // namespace fastmlp
