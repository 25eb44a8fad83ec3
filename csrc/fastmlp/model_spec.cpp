// Model specs: validation, output width and activation, and the parameter layout.
#include "fastmlp/model_spec.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace fastmlp {

bool takes_class_ids(Loss l) {
  return l == Loss::SparseCategoricalCrossentropy || l == Loss::MulticlassHinge;
}

int output_width(const ModelSpec& spec) {
  int width = spec.input_dim;
  for (const LayerSpec& l : spec.layers)
    if (l.kind == LayerKind::Dense) width = l.units;
  return width;
}

ActivationSpec output_activation(const ModelSpec& spec) {
  const LayerSpec& last = spec.layers.back();
  return last.kind == LayerKind::Dense || last.kind == LayerKind::Activation ? last.activation : ActivationSpec{};
}

int target_columns(const ModelSpec& spec) {
  return takes_class_ids(spec.loss) ? 1 : output_width(spec);
}

std::vector<LayerParams> parameter_layout(const ModelSpec& spec, int64_t* total) {
  std::vector<LayerParams> layout;
  int64_t n = 0;
  int width = spec.input_dim;
  auto take = [&n](int64_t size) {
    const int64_t offset = n;
    n += size;
    return offset;
  };
  for (const LayerSpec& l : spec.layers) {
    LayerParams p;
    p.in = width;
    p.out = l.kind == LayerKind::Dense ? l.units : width;
    switch (l.kind) {
      case LayerKind::Dense:
        p.w = take(int64_t(p.in) * p.out);
        p.b = take(p.out);
        break;
      case LayerKind::BatchNormalization:
      case LayerKind::LayerNormalization:
        if (l.scale) p.gamma = take(p.out);
        if (l.center) p.beta = take(p.out);
        if (l.kind == LayerKind::BatchNormalization) {
          p.moving_mean = take(p.out);
          p.moving_var = take(p.out);
        }
        break;
      default: break;  // Dropout and Activation have no parameters
    }
    layout.push_back(p);
    width = p.out;
  }
  if (total) *total = n;
  return layout;
}

namespace {

const char* kind_name(LayerKind k) {
  switch (k) {
    case LayerKind::Dense: return "Dense";
    case LayerKind::Dropout: return "Dropout";
    case LayerKind::BatchNormalization: return "BatchNormalization";
    case LayerKind::LayerNormalization: return "LayerNormalization";
    case LayerKind::Activation: return "Activation";
  }
  return "?";
}

void validate_activation(const ActivationSpec& a, const std::string& where) {
  if (int(a.kind) < 0 || int(a.kind) >= kActivationCount) throw std::invalid_argument(where + ": unknown activation");
  if (a.kind == Activation::LeakyRelu && !(a.param >= 0.0 && std::isfinite(a.param)))
    throw std::invalid_argument(where + ": leaky_relu slope must be a finite number >= 0");
  if (a.kind == Activation::Elu && !(a.param > 0.0 && std::isfinite(a.param)))
    throw std::invalid_argument(where + ": elu alpha must be a finite number > 0");
}

}  // namespace

void validate(const ModelSpec& spec) {
  if (spec.input_dim <= 0) throw std::invalid_argument("input_dim must be positive, got " + std::to_string(spec.input_dim));
  bool any_dense = false;
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    const LayerSpec& l = spec.layers[i];
    const bool last = i + 1 == spec.layers.size();
    const std::string where = "layer " + std::to_string(i) + " (" + kind_name(l.kind) + ")";
    if (int(l.kind) < 0 || int(l.kind) >= kLayerKindCount)
      throw std::invalid_argument("layer " + std::to_string(i) + ": unknown layer kind");
    switch (l.kind) {
      case LayerKind::Dense:
        any_dense = true;
        if (l.units <= 0) throw std::invalid_argument(where + ": units must be positive, got " + std::to_string(l.units));
        if (!(l.l1 >= 0.0 && std::isfinite(l.l1)) || !(l.l2 >= 0.0 && std::isfinite(l.l2)))
          throw std::invalid_argument(where + ": regularization must be a finite number >= 0");
        [[fallthrough]];
      case LayerKind::Activation:
        validate_activation(l.activation, where);
        if (l.activation.kind == Activation::Softmax && !last)
          throw std::invalid_argument(where + ": softmax is only supported as the model's last activation");
        break;
      case LayerKind::Dropout:
        if (!(l.dropout.rate >= 0.0 && l.dropout.rate < 1.0))
          throw std::invalid_argument(where + ": rate must be in [0, 1), got " + std::to_string(l.dropout.rate));
        break;
      case LayerKind::BatchNormalization:
        if (!(l.momentum >= 0.0 && l.momentum <= 1.0))
          throw std::invalid_argument(where + ": momentum must be in [0, 1], got " + std::to_string(l.momentum));
        [[fallthrough]];
      case LayerKind::LayerNormalization:
        if (!(l.epsilon > 0.0 && std::isfinite(l.epsilon)))
          throw std::invalid_argument(where + ": epsilon must be a finite number > 0");
        break;
    }
  }
  if (!any_dense) throw std::invalid_argument("a model needs at least one Dense layer");
  const MetricSet& ms = spec.metrics;
  if (ms.count < 0 || ms.count > kMaxMetrics)
    throw std::invalid_argument("at most " + std::to_string(kMaxMetrics) + " further metrics");
  std::vector<bool> taken(kMetricSlots, false);
  for (int k = 0; k < ms.count; ++k) {
    const MetricSpec& m = ms.specs[k];
    if (int(m.kind) < 0 || int(m.kind) >= kMetricKindCount) throw std::invalid_argument("unknown metric kind");
    const int n = metric_slot_count(m.kind);
    if (m.slot < 0 || m.slot + n > kMetricSlots)
      throw std::invalid_argument("metric slots beyond " + std::to_string(kMetricSlots));
    for (int s = m.slot; s < m.slot + n; ++s) {
      if (taken[s]) throw std::invalid_argument("two metrics share a slot");
      taken[s] = true;
    }
    if (m.kind == MetricKind::TopK && m.param < 1) throw std::invalid_argument("top-k accuracy needs k >= 1");
  }
  const Activation out = output_activation(spec).kind;
  const int width = output_width(spec);
  switch (spec.loss) {
    case Loss::SparseCategoricalCrossentropy:
    case Loss::CategoricalCrossentropy:
      if (out != Activation::Softmax && out != Activation::Linear)
        throw std::invalid_argument(
            "categorical cross-entropy needs a softmax output layer (or a linear one with from_logits=True)");
      if (width < 2) throw std::invalid_argument("categorical cross-entropy needs at least 2 output units");
      break;
    case Loss::BinaryCrossentropy:
      if (out != Activation::Sigmoid && out != Activation::Linear)
        throw std::invalid_argument(
            "binary cross-entropy needs a sigmoid output layer (or a linear one with from_logits=True)");
      break;
    case Loss::MulticlassHinge:
      if (width < 2) throw std::invalid_argument("multiclass hinge needs at least 2 output units");
      break;
    case Loss::Huber:
      if (!(spec.loss_param > 0.0 && std::isfinite(spec.loss_param)))
        throw std::invalid_argument("huber's delta must be a finite number > 0");
      break;
    default: break;
  }
}

void validate(const OptimizerConfig& c) {
  auto need = [](bool ok, const char* what) {
    if (!ok) throw std::invalid_argument(std::string("optimizer: ") + what);
  };
  auto finite_nonneg = [](double v) { return std::isfinite(v) && v >= 0.0; };
  auto in_unit = [](double v) { return v >= 0.0 && v <= 1.0; };
  need(int(c.kind) >= 0 && int(c.kind) < kOptimizerKindCount, "unknown optimizer kind");
  need(finite_nonneg(c.lr), "lr must be a finite number >= 0");
  need(finite_nonneg(c.weight_decay), "weight_decay must be a finite number >= 0");
  need(finite_nonneg(c.momentum), "momentum must be a finite number >= 0");
  need(finite_nonneg(c.dampening), "dampening must be a finite number >= 0");
  need(c.beta1 >= 0.0 && c.beta1 < 1.0 && c.beta2 >= 0.0 && c.beta2 < 1.0, "betas must be in [0, 1)");
  need(finite_nonneg(c.eps), "eps must be a finite number >= 0");
  need(in_unit(c.alpha), "alpha must be in [0, 1]");
  need(in_unit(c.rho), "rho must be in [0, 1]");
  need(finite_nonneg(c.lr_decay), "lr_decay must be a finite number >= 0");
  need(finite_nonneg(c.initial_accumulator_value), "initial_accumulator_value must be a finite number >= 0");
  need(finite_nonneg(c.momentum_decay), "momentum_decay must be a finite number >= 0");
  need(finite_nonneg(c.clipvalue), "clipvalue must be a finite number > 0 (0: off)");
  need(finite_nonneg(c.clipnorm), "clipnorm must be a finite number > 0 (0: off)");
  need(finite_nonneg(c.global_clipnorm), "global_clipnorm must be a finite number > 0 (0: off)");
  need((c.clipvalue > 0.0) + (c.clipnorm > 0.0) + (c.global_clipnorm > 0.0) <= 1,
       "only one of clipvalue, clipnorm and global_clipnorm may be set");
  const Schedule& s = c.schedule;
  need(int(s.kind) >= 0 && int(s.kind) < kScheduleKindCount, "unknown schedule kind");
  need(std::isfinite(s.decay_steps) && s.decay_steps > 0.0, "schedule decay_steps must be a finite number > 0");
  need(finite_nonneg(s.rate), "schedule rate must be a finite number >= 0");
  need(finite_nonneg(s.min_lr), "schedule min_lr must be a finite number >= 0");
  need(s.warmup_steps >= 0, "schedule warmup_steps must be >= 0");
}

}  // namespace fastmlp
