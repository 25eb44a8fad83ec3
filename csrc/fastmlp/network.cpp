// The network inside an Engine: the layer ops it runs, their workspace, and the forward and
// backward passes as sequences of backend calls.
//
// Gradient convention between ops: dz_[i] holds the gradient of the loss w.r.t. op i's output,
// except for a Dense op with an activation, where it holds the gradient w.r.t. the
// pre-activation. The op that consumes a Dense op's output therefore multiplies its input
// gradient by that Dense's activation derivative (x_act below), fused into its own pass; this
// keeps the Dense-Dense path as fast as before (cuBLASLt's DRELU_BGRAD epilogue on a GPU).
#include <stdexcept>
#include <string>

#include "fastmlp/engine.h"
#include "fastmlp/math.h"

namespace fastmlp {

template <typename T>
void Engine<T>::lower(const std::vector<LayerParams>& layout) {
  ops_.clear();
  for (size_t i = 0; i < spec_.layers.size(); ++i) {
    const LayerSpec& l = spec_.layers[i];
    // A Dense without an activation takes the Activation layer that follows it: one fused pass
    // (not GELU or SiLU, whose derivative needs their input, which a fused Dense does not keep).
    if (l.kind == LayerKind::Activation && !ops_.empty() && ops_.back().kind == LayerKind::Dense &&
        ops_.back().act.kind == Activation::Linear && !math::grad_needs_input(l.activation.kind)) {
      ops_.back().act = l.activation;
      continue;
    }
    Op op;
    op.kind = l.kind;
    op.in = layout[i].in;
    op.out = layout[i].out;
    op.act = l.activation;
    op.dropout = l.dropout;
    op.norm.axis = l.kind == LayerKind::LayerNormalization ? NormAxis::Features : NormAxis::Batch;
    op.norm.epsilon = l.epsilon;
    op.params = layout[i];
    ops_.push_back(op);
    if (l.kind == LayerKind::Dense && math::grad_needs_input(op.act.kind)) {
      // Dense(GELU) runs as Dense(linear) + Activation(GELU): the Activation op keeps z, its input.
      Op act;
      act.kind = LayerKind::Activation;
      act.in = act.out = op.out;
      act.act = op.act;
      ops_.back().act = ActivationSpec{};
      ops_.push_back(act);
    }
  }
  // The model's final activation is applied by the loss to the logits: take it off the last op.
  out_act_ = output_activation(spec_);
  if (ops_.back().kind == LayerKind::Activation) {
    ops_.pop_back();  // validate() saw a Dense, so ops_ is not empty
    // Its input came from a Dense whose own activation stays: the loss gradient needs its derivative.
    logits_activated_ = ops_.back().kind == LayerKind::Dense && ops_.back().act.kind != Activation::Linear;
  } else if (ops_.back().kind == LayerKind::Dense) {
    ops_.back().act = ActivationSpec{};
  }
  for (size_t i = 0; i + 1 < ops_.size(); ++i)
    ops_[i].keeps_record = ops_[i].kind == LayerKind::Dense && ops_[i + 1].kind == LayerKind::Dense;
  // The backward pass stops computing input gradients below the first op with parameters
  // (e.g. the Dense after an input Dropout skips its dX GEMM).
  bool trainable_before = false;
  for (Op& op : ops_) {
    op.needs_input_grad = trainable_before;
    trainable_before = trainable_before || op.params.w >= 0 || op.params.gamma >= 0 || op.params.beta >= 0;
  }
}

template <typename T>
void Engine<T>::ensure_workspace(int rows) {
  if (rows <= capacity_) return;
  Backend<T>* be = backend_.get();
  // Forget the old workspace (and the captured steps that point at it) before allocating, so an
  // allocation that throws leaves an engine that simply has none and allocates again next time.
  be->reset_captures();
  captured_dataset_ = 0;
  capacity_ = 0;
  acts_.clear();
  dz_.clear();
  records_.clear();
  xhat_.clear();
  inv_std_.clear();
  x_batch_.reset();
  y_batch_.reset();
  std::vector<BackendBuffer<T>> acts, dz, records, xhat, inv_std;
  for (const Op& op : ops_) {
    const size_t cells = size_t(rows) * op.out;
    const bool norm = op.kind == LayerKind::BatchNormalization || op.kind == LayerKind::LayerNormalization;
    acts.emplace_back(be, sizeof(T) * cells);
    dz.emplace_back(be, sizeof(T) * cells);
    records.emplace_back(be, op.keeps_record ? be->activation_record_bytes(rows, op.out, op.act) : 0);
    xhat.emplace_back(be, norm ? sizeof(T) * cells : 0);
    inv_std.emplace_back(be, norm ? sizeof(T) * (op.norm.axis == NormAxis::Batch ? op.out : rows) : 0);
  }
  BackendBuffer<T> x_batch(be, sizeof(T) * size_t(rows) * spec_.input_dim);
  // A batch's targets: at most n_out columns, and one more for a sample weight (Dataset::weighted).
  BackendBuffer<T> y_batch(be, sizeof(T) * size_t(rows) * (target_columns(spec_) + 1));
  acts_ = std::move(acts);
  dz_ = std::move(dz);
  records_ = std::move(records);
  xhat_ = std::move(xhat);
  inv_std_ = std::move(inv_std);
  record_kept_.assign(ops_.size(), false);
  outputs_.assign(ops_.size(), nullptr);
  x_batch_ = std::move(x_batch);
  y_batch_ = std::move(y_batch);
  capacity_ = rows;
}

template <typename T>
void Engine<T>::forward(int rows, const T* X, bool train, const TrainCounters* counters) {
  Backend<T>* be = backend_.get();
  T* P = params_.get();
  T* G = grads_.get();
  auto at = [](T* base, int64_t offset) { return offset < 0 ? nullptr : base + offset; };
  const T* in = X;
  for (size_t i = 0; i < ops_.size(); ++i) {
    const Op& op = ops_[i];
    const LayerParams& p = op.params;
    T* out = acts_[i].get();
    switch (op.kind) {
      case LayerKind::Dense: {
        const bool kept = be->dense_forward(rows, op.in, op.out, in, P + p.w, P + p.b, op.act, out,
                                            train && op.keeps_record ? records_[i].get() : nullptr);
        // Read by the backward pass that follows (inside a captured step both run once, at capture).
        if (train) record_kept_[i] = kept;
        break;
      }
      case LayerKind::Activation:
        be->activation_forward(rows, op.in, in, op.act, out);
        break;
      case LayerKind::Dropout:
        if (!train) {  // inference: the identity, no copy
          out = const_cast<T*>(in);
          break;
        }
        be->dropout_forward(rows, op.in, in, op.dropout, counters, out);
        break;
      case LayerKind::BatchNormalization:
      case LayerKind::LayerNormalization: {
        // BatchNormalization in inference uses the moving statistics; in training it leaves the
        // batch's in the gradient slots of the moving statistics, whose update averages them in.
        const bool moving = op.kind == LayerKind::BatchNormalization && !train;
        const bool batch_stats = op.kind == LayerKind::BatchNormalization && train;
        be->normalize_forward(op.norm, rows, op.in, in, at(P, p.gamma), at(P, p.beta),
                              moving ? P + p.moving_mean : nullptr, moving ? P + p.moving_var : nullptr, out,
                              xhat_[i].get(), inv_std_[i].get(), batch_stats ? G + p.moving_mean : nullptr,
                              batch_stats ? G + p.moving_var : nullptr);
        break;
      }
    }
    outputs_[i] = out;
    in = out;
  }
}

template <typename T>
void Engine<T>::backward(int rows, const T* X, const TrainCounters* counters,
                         std::vector<KernelGradient<T>>* formed) {
  Backend<T>* be = backend_.get();
  T* P = params_.get();
  T* G = grads_.get();
  auto at = [](T* base, int64_t offset) { return offset < 0 ? nullptr : base + offset; };
  const size_t last = ops_.size() - 1;
  if (logits_activated_) {  // dz of the last Dense is w.r.t. its pre-activation: apply its derivative
    const Op& op = ops_[last];
    be->activation_backward(rows, op.out, outputs_[last], outputs_[last], dz_[last].get(), ActivationSpec{}, op.act,
                            dz_[last].get());
  }
  bool bias_grad_done = false;  // set when the call that made dz_[i] also summed it into db
  fused_backward_layers_ = 0;
  for (size_t i = ops_.size(); i-- > 0;) {
    const Op& op = ops_[i];
    const LayerParams& p = op.params;
    const Op* prev = i ? &ops_[i - 1] : nullptr;
    const bool prev_dense = prev && prev->kind == LayerKind::Dense;
    const T* in = prev ? outputs_[i - 1] : X;
    // The producer's activation derivative, applied to the input gradient here (see the top).
    const ActivationSpec in_act = prev_dense ? prev->act : ActivationSpec{};
    T* dX = prev && op.needs_input_grad ? dz_[i - 1].get() : nullptr;
    bool wrote_prev_db = false;
    switch (op.kind) {
      case LayerKind::Dense: {
        const void* in_record = prev_dense && record_kept_[i - 1] ? records_[i - 1].get() : nullptr;
        // X and dz_[i] stay untouched until the optimizer step, which reads them.
        // The first op reads the batch and forms no input gradient (KernelGradient::deferrable).
        if (formed) formed->push_back(KernelGradient<T>{p.w, op.in, op.out, in, dz_[i].get(), prev == nullptr});
        wrote_prev_db = be->dense_backward(rows, op.in, op.out, in, in_record, P + p.w, dz_[i].get(),
                                           formed ? nullptr : G + p.w,
                                           bias_grad_done ? nullptr : G + p.b, dX, in_act,
                                           prev_dense ? G + prev->params.b : nullptr);
        break;
      }
      case LayerKind::Activation:
        if (dX) be->activation_backward(rows, op.in, in, outputs_[i], dz_[i].get(), op.act, in_act, dX);
        break;
      case LayerKind::Dropout:
        if (dX) be->dropout_backward(rows, op.in, in, dz_[i].get(), op.dropout, counters, in_act, dX);
        break;
      case LayerKind::BatchNormalization:
      case LayerKind::LayerNormalization:
        if (!dX && p.gamma < 0 && p.beta < 0) break;  // nothing below needs it
        be->normalize_backward(op.norm, rows, op.in, in, xhat_[i].get(), inv_std_[i].get(), at(P, p.gamma),
                               dz_[i].get(), at(G, p.gamma), at(G, p.beta), in_act, dX);
        break;
    }
    bias_grad_done = wrote_prev_db;
    fused_backward_layers_ += wrote_prev_db;
  }
}

// The rest of Engine is instantiated in engine.cpp; these members are defined here.
#define FASTMLP_INSTANTIATE_NETWORK(T)                                                   \
  template void Engine<T>::lower(const std::vector<LayerParams>&);                       \
  template void Engine<T>::ensure_workspace(int);                                        \
  template void Engine<T>::forward(int, const T*, bool, const TrainCounters*);           \
  template void Engine<T>::backward(int, const T*, const TrainCounters*, std::vector<KernelGradient<T>>*);
FASTMLP_INSTANTIATE_NETWORK(float)
FASTMLP_INSTANTIATE_NETWORK(double)

}  // namespace fastmlp
