// A model as the user describes it: its layers, loss and metric, the checks every spec passes,
// and where each layer's parameters sit in the flat buffer. Knows nothing of backends.
#pragma once
#include <cstdint>
#include <vector>

#include "fastmlp/types.h"

namespace fastmlp {

// One layer of a model, as the user wrote it (fields not of its kind are ignored).
struct LayerSpec {
  LayerKind kind = LayerKind::Dense;
  int units = 0;               // Dense: output width
  ActivationSpec activation;   // Dense, Activation
  double l1 = 0.0, l2 = 0.0;   // Dense: kernel regularizer
  DropoutSpec dropout;         // Dropout
  double momentum = 0.99;      // BatchNormalization: of the moving statistics
  double epsilon = 1e-3;       // BatchNormalization, LayerNormalization
  bool center = true, scale = true;  // normalizations: learn beta / gamma
};

// Shorthands for C++ embedders: spec.layers = {dense_layer(64, {Activation::Relu}), ...}.
inline LayerSpec dense_layer(int units, ActivationSpec activation = {}, double l1 = 0.0, double l2 = 0.0) {
  LayerSpec l;
  l.units = units;
  l.activation = activation;
  l.l1 = l1;
  l.l2 = l2;
  return l;
}
inline LayerSpec dropout_layer(double rate, uint64_t seed) {
  LayerSpec l;
  l.kind = LayerKind::Dropout;
  l.dropout = {rate, seed};
  return l;
}
inline LayerSpec batch_norm_layer(double momentum = 0.99, double epsilon = 1e-3) {
  LayerSpec l;
  l.kind = LayerKind::BatchNormalization;
  l.momentum = momentum;
  l.epsilon = epsilon;
  return l;
}
inline LayerSpec layer_norm_layer(double epsilon = 1e-3) {
  LayerSpec l;
  l.kind = LayerKind::LayerNormalization;
  l.epsilon = epsilon;
  return l;
}
inline LayerSpec activation_layer(ActivationSpec activation) {
  LayerSpec l;
  l.kind = LayerKind::Activation;
  l.activation = activation;
  return l;
}

struct ModelSpec {
  int input_dim = 0;
  std::vector<LayerSpec> layers;
  Loss loss = Loss::MeanSquaredError;
  double loss_param = 0.0;  // Huber's delta; unused by the other losses
  Metric metric = Metric::None;
  MetricSet metrics;  // further metrics, each into its own slots (types.h)
};

// Checks a spec and throws std::invalid_argument naming the problem.
void validate(const ModelSpec& spec);
// The same for optimizer settings (the bindings and embedders may pass anything).
void validate(const OptimizerConfig& config);
// Width of the model's output (its last layer's).
int output_width(const ModelSpec& spec);
// The activation the loss applies to the last layer's output: the last layer's own when it is a
// Dense or an Activation, else linear.
ActivationSpec output_activation(const ModelSpec& spec);
// Losses whose targets are one class id per row.
bool takes_class_ids(Loss loss);
// Columns of a target row: 1 for losses that take a class id, else the output width.
int target_columns(const ModelSpec& spec);

// Where a layer's parameters sit in the flat buffer (-1: none of that kind), in get_weights()
// order: Dense W (in x out) then b; normalizations gamma and beta (when learned), then
// BatchNormalization's moving mean and moving variance (not trained).
struct LayerParams {
  int in = 0, out = 0;
  int64_t w = -1, b = -1, gamma = -1, beta = -1, moving_mean = -1, moving_var = -1;
};
// The layout of every layer; *total receives the parameter count.
std::vector<LayerParams> parameter_layout(const ModelSpec& spec, int64_t* total = nullptr);

}  // namespace fastmlp
