// Plain configuration types shared by the core, both backends and the bindings.
// Everything here is trivially copyable so a backend can keep a copy in device memory.
#pragma once
#include <cstdint>

namespace fastmlp {

enum class Activation : int32_t { Linear = 0, Sigmoid, Tanh, Relu, LeakyRelu, Elu, Softmax };

// Every loss is computed from the output layer's pre-activation z, fused with the output
// activation, so softmax/sigmoid + cross-entropy use the stable log-sum-exp forms.
enum class Loss : int32_t {
  SparseCategoricalCrossentropy = 0,  // targets: one integer class per row
  CategoricalCrossentropy,            // targets: a probability row (one-hot or soft)
  BinaryCrossentropy,                 // targets: 0/1 (or soft) per output
  MeanSquaredError,                   // targets: real values per output
  MulticlassHinge,                    // targets: one integer class per row
};

// Metric accumulated next to the loss: accuracy for classifiers, mean absolute error otherwise.
enum class Metric : int32_t { None = 0, Accuracy, BinaryAccuracy, MeanAbsoluteError };

enum class OptimizerKind : int32_t { SGD = 0, Adagrad, RMSprop, Adadelta, Adam, AdamW };

enum class ScheduleKind : int32_t { Constant = 0, StepDecay, ExponentialDecay, InverseTimeDecay, Cosine };

struct ActivationSpec {
  Activation kind = Activation::Linear;
  double param = 0.0;  // leaky_relu: negative slope; elu: alpha
};

// The kinds of layer op a model is a sequence of (docs/formulas.md, "Layers").
enum class LayerKind : int32_t { Dense = 0, Dropout, BatchNormalization, LayerNormalization, Activation };

// Inverted dropout: each element is kept with probability 1 - rate, drawn from (seed, the
// optimizer step, the element's index in the batch) by math::dropout_keep, so every backend
// and every replay of a step draws the same mask.
struct DropoutSpec {
  double rate = 0.0;
  uint64_t seed = 0;
};

// Normalization of x to mean 0 and variance 1 (biased) with a learned scale and shift:
// BatchNormalization over the rows of a batch (one mean per column), LayerNormalization over
// the columns of a row (one mean per row).
enum class NormAxis : int32_t { Batch = 0, Features };
struct NormSpec {
  NormAxis axis = NormAxis::Batch;
  double epsilon = 1e-3;
};

// Learning rate as a function of the optimizer step t (0-based, counted before the update).
struct Schedule {
  ScheduleKind kind = ScheduleKind::Constant;
  double decay_steps = 1.0;  // step: step size; exponential: steps per decay; cosine: total steps
  double rate = 1.0;         // step/exponential: multiplier per period; inverse-time: decay constant
  double min_lr = 0.0;       // cosine: floor
  bool staircase = false;    // exponential: integer periods only
  int64_t warmup_steps = 0;  // linear warm-up from lr/warmup_steps to lr over these steps
};

// Hyper-parameters of every optimizer in one struct; names follow torch.optim.
struct OptimizerConfig {
  OptimizerKind kind = OptimizerKind::SGD;
  double lr = 0.01;
  double momentum = 0.0;      // SGD, RMSprop
  double dampening = 0.0;     // SGD
  bool nesterov = false;      // SGD
  double weight_decay = 0.0;  // L2 added to the gradient of every parameter (AdamW: decoupled)
  double beta1 = 0.9, beta2 = 0.999;  // Adam, AdamW
  double eps = 1e-8;          // Adam(W), RMSprop, Adagrad (1e-10), Adadelta (1e-6)
  bool amsgrad = false;       // Adam, AdamW
  double alpha = 0.99;        // RMSprop smoothing
  bool centered = false;      // RMSprop
  double rho = 0.9;           // Adadelta
  double lr_decay = 0.0;      // Adagrad
  double initial_accumulator_value = 0.0;  // Adagrad
  Schedule schedule;
};

// Number of per-parameter state slots each optimizer keeps (each slot is one flat buffer).
inline int optimizer_state_slots(const OptimizerConfig& c) {
  switch (c.kind) {
    case OptimizerKind::SGD: return c.momentum != 0.0 ? 1 : 0;
    case OptimizerKind::Adagrad: return 1;
    case OptimizerKind::RMSprop: return 1 + (c.centered ? 1 : 0) + (c.momentum > 0.0 ? 1 : 0);
    case OptimizerKind::Adadelta: return 2;
    case OptimizerKind::Adam:
    case OptimizerKind::AdamW: return c.amsgrad ? 3 : 2;
  }
  return 0;
}

// A contiguous run of parameters (one layer's kernel, bias, gamma, ...) and its regularization.
// A moving-average segment (BatchNormalization's moving mean and variance) is not trained: in
// its place in the gradient buffer the forward pass leaves the batch statistic, and the update
// step sets p = momentum * p + (1 - momentum) * statistic.
struct ParamSegment {
  int64_t offset = 0;
  int64_t size = 0;
  double l1 = 0.0;  // adds l1 * sum|w| to the loss
  double l2 = 0.0;  // adds l2 * sum w^2 to the loss
  int32_t moving_average = 0;
  double momentum = 0.0;  // moving-average segments only
};

// Scalars that change from step to step. They live in backend memory and are read and
// advanced by the kernels themselves, so a captured CUDA graph can be replayed unchanged.
struct TrainCounters {
  int64_t step = 0;         // optimizer updates applied so far (t before the next update)
  int64_t batch_start = 0;  // position of the next batch in the epoch's permutation
  double loss_sum = 0.0;    // sum over samples of the data loss since the last reset
  double reg_sum = 0.0;     // sum over updates of (regularization penalty * batch rows)
  double metric_sum = 0.0;  // correct predictions or absolute errors since the last reset
  int32_t nonfinite = 0;    // set when a loss was NaN/Inf: later updates are skipped
  uint32_t blocks_done = 0;  // CUDA: blocks of the optimizer kernel finished this step
  int32_t update_overflow = 0;  // CUDA: a block's update overflowed this step; the last block
                                // moves it to nonfinite, so every block skips or runs alike
};

}  // namespace fastmlp
