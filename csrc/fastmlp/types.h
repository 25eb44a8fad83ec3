// Plain configuration types shared by the core, both backends and the bindings.
// Everything here is trivially copyable so a backend can keep a copy in device memory.
#pragma once
#include <cstdint>

namespace fastmlp {

// Each enum that Python names is a list, once: LIST(X) expands X(enum name, Python name) for
// every kind, in id order. FASTMLP_NAMED_ENUM(Enum, LIST) makes the enum (ids 0, 1, ... in list
// order), k<Enum>Names (the Python names by id: the bindings export them as the *_KINDS dicts that
// python/fastmlp/_enums.py reads instead of copying ids) and k<Enum>Count (ids are checked
// against it; enum_count(Enum{}) gives it to templates). A kind is one line in its list; its
// formula goes where the list's comment says.
#define FASTMLP_ENUM_ENTRY(name, python_name) name,
#define FASTMLP_ENUM_PYTHON_NAME(name, python_name) python_name,
#define FASTMLP_NAMED_ENUM(Enum, LIST)                                                     \
  enum class Enum : int32_t { LIST(FASTMLP_ENUM_ENTRY) };                                  \
  inline constexpr const char* k##Enum##Names[] = {LIST(FASTMLP_ENUM_PYTHON_NAME)};        \
  inline constexpr int k##Enum##Count = int(sizeof(k##Enum##Names) / sizeof(k##Enum##Names[0])); \
  constexpr int enum_count(Enum) { return k##Enum##Count; }

// Per-element formulas: math::activate and its derivatives, math::activation_grad* (math.h).
#define FASTMLP_ACTIVATIONS(X)                                                                        \
  X(Linear, "linear") X(Sigmoid, "sigmoid") X(Tanh, "tanh") X(Relu, "relu") X(LeakyRelu, "leaky_relu") \
  X(Elu, "elu") X(Softmax, "softmax") X(Exponential, "exponential") X(Softplus, "softplus")           \
  X(Selu, "selu") X(Gelu, "gelu") X(Silu, "silu")
FASTMLP_NAMED_ENUM(Activation, FASTMLP_ACTIVATIONS)

// Every loss is computed from the output layer's pre-activation z, fused with the output
// activation, so softmax/sigmoid + cross-entropy use the stable log-sum-exp forms.
// Targets: one integer class per row (sparse_categorical_crossentropy, multiclass_hinge), a
// probability row (categorical_crossentropy: one-hot or soft), 0/1 or soft per output
// (binary_crossentropy), counts or rates >= 0 per output (poisson), real values per output (the
// rest; huber's parameter is delta > 0). Formulas: math::pointwise_loss and math::loss_row (math.h).
#define FASTMLP_LOSSES(X)                                                                        \
  X(SparseCategoricalCrossentropy, "sparse_categorical_crossentropy")                            \
  X(CategoricalCrossentropy, "categorical_crossentropy") X(BinaryCrossentropy, "binary_crossentropy") \
  X(MeanSquaredError, "mse") X(MulticlassHinge, "multiclass_hinge") X(Poisson, "poisson")          \
  X(Huber, "huber") X(MeanAbsoluteError, "mae") X(LogCosh, "log_cosh")
FASTMLP_NAMED_ENUM(Loss, FASTMLP_LOSSES)

// Metric accumulated next to the loss: accuracy for classifiers, mean absolute error otherwise.
// "none" is Python's None.
#define FASTMLP_METRICS(X) \
  X(None, "none") X(Accuracy, "accuracy") X(BinaryAccuracy, "binary_accuracy") X(MeanAbsoluteError, "mae")
FASTMLP_NAMED_ENUM(Metric, FASTMLP_METRICS)

// Further metrics (compile(metrics=[...]) with more than one): each adds per-row contributions to
// its own slots of a sum array that follows the counters (math::metric_row); the final value is
// computed from the sums when an epoch or evaluation ends (fastmlp/metrics.py).
// Slots: accuracy 1 (hits: argmax, or per-output 0.5 thresholds for binary outputs); top_k 1
// (rows whose class is among the k largest outputs, param = k); mae 1 (mean over outputs of
// |a - y|); mse 1 (of (a - y)^2); precision 2 (true positives, predicted positives a > 0.5);
// recall 2 (true positives, actual positives y > 0.5); auc 2 * kAucBins (histograms of the scores
// of positives and of negatives). Per row: math::metric_row (math.h).
#define FASTMLP_METRIC_KINDS(X)                                                                   \
  X(Accuracy, "accuracy") X(TopK, "top_k") X(MeanAbsoluteError, "mae") X(MeanSquaredError, "mse") \
  X(Precision, "precision") X(Recall, "recall") X(Auc, "auc")
FASTMLP_NAMED_ENUM(MetricKind, FASTMLP_METRIC_KINDS)
constexpr int kAucBins = 200;       // Keras's AUC(num_thresholds=200): one bin per threshold
constexpr int kMaxMetrics = 8;
constexpr int kMetricSlots = 512;   // room for one AUC and seven two-slot metrics
struct MetricSpec {
  MetricKind kind = MetricKind::Accuracy;
  int32_t param = 0;  // TopK: k
  int32_t slot = 0;   // its first slot
};
struct MetricSet {
  int32_t count = 0;
  MetricSpec specs[kMaxMetrics];
};
constexpr int metric_slot_count(MetricKind kind) {
  return kind == MetricKind::Auc ? 2 * kAucBins
                                 : (kind == MetricKind::Precision || kind == MetricKind::Recall ? 2 : 1);
}

// Every optimizer, once. The enum, the bindings' OPTIMIZER_KINDS and the CPU backend's dispatch
// are generated from this list. An optimizer's hyper-parameters are fields of OptimizerConfig,
// its state slots a case of optimizer_state_slots, its per-element update a case of
// math::optimizer_update (both switches have no default, so -Wswitch names a case that is
// missing), and its class in optimizers.py.
#define FASTMLP_OPTIMIZERS(X)                                                                        \
  X(SGD, "sgd") X(Adagrad, "adagrad") X(RMSprop, "rmsprop") X(Adadelta, "adadelta") X(Adam, "adam") \
  X(AdamW, "adamw") X(NAdam, "nadam") X(RAdam, "radam") X(LAMB, "lamb")

FASTMLP_NAMED_ENUM(OptimizerKind, FASTMLP_OPTIMIZERS)

// Formulas: math::scheduled_lr (math.h).
#define FASTMLP_SCHEDULES(X)                                                                        \
  X(Constant, "constant") X(StepDecay, "step") X(ExponentialDecay, "exponential")                   \
  X(InverseTimeDecay, "inverse_time") X(Cosine, "cosine")
FASTMLP_NAMED_ENUM(ScheduleKind, FASTMLP_SCHEDULES)

struct ActivationSpec {
  Activation kind = Activation::Linear;
  double param = 0.0;  // leaky_relu: negative slope; elu: alpha
};

// The kinds of layer op a model is a sequence of (docs/formulas.md, "Layers").
#define FASTMLP_LAYER_KINDS(X)                                                                           \
  X(Dense, "dense") X(Dropout, "dropout") X(BatchNormalization, "batch_normalization")                     \
  X(LayerNormalization, "layer_normalization") X(Activation, "activation")
FASTMLP_NAMED_ENUM(LayerKind, FASTMLP_LAYER_KINDS)
#undef FASTMLP_NAMED_ENUM
#undef FASTMLP_ENUM_PYTHON_NAME
#undef FASTMLP_ENUM_ENTRY

// The names of the last ids before the lists (kept for C++ code embedding the core).
constexpr Activation kLastActivation = Activation(kActivationCount - 1);
constexpr Loss kLastLoss = Loss(kLossCount - 1);
constexpr MetricKind kLastMetricKind = MetricKind(kMetricKindCount - 1);
constexpr int kOptimizerKinds = kOptimizerKindCount;

// Inverted dropout: each element is kept with probability 1 - rate, drawn from (seed, the
// optimizer step, the element's index in the (global) batch) by math::dropout_keep, so every
// backend, every replay of a step and every data-parallel split draws the same mask.
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
  double beta1 = 0.9, beta2 = 0.999;  // Adam, AdamW, NAdam, RAdam, LAMB
  double eps = 1e-8;          // Adam(W), NAdam, RAdam, RMSprop, Adagrad (1e-10), Adadelta (1e-6), LAMB (1e-6)
  bool amsgrad = false;       // Adam, AdamW
  double momentum_decay = 4e-3;       // NAdam (psi)
  bool decoupled_weight_decay = false;  // NAdam, RAdam: p *= 1 - lr * weight_decay instead of L2
  // Gradient clipping before the optimizer (0: off; Keras's optimizer argument names): each
  // element to [-clipvalue, clipvalue]; each segment (a kernel, a bias) to norm clipnorm (Keras's
  // clip_by_norm); all gradients together to norm global_clipnorm with torch's
  // clip_grad_norm_ formula (max / (norm + 1e-6)).
  double clipvalue = 0.0, clipnorm = 0.0, global_clipnorm = 0.0;
  double alpha = 0.99;        // RMSprop smoothing
  bool centered = false;      // RMSprop
  double rho = 0.9;           // Adadelta
  double lr_decay = 0.0;      // Adagrad
  double initial_accumulator_value = 0.0;  // Adagrad
  Schedule schedule;
};

// Number of per-parameter state slots each optimizer keeps (each slot is one flat buffer).
// From the kind and the flags that add slots; constexpr, so the CPU backend's compile-time
// variants size their state with the same function.
constexpr int optimizer_state_slots(OptimizerKind kind, bool momentum, bool centered, bool amsgrad) {
  switch (kind) {
    case OptimizerKind::SGD: return momentum ? 1 : 0;
    case OptimizerKind::Adagrad: return 1;
    case OptimizerKind::RMSprop: return 1 + (centered ? 1 : 0) + (momentum ? 1 : 0);
    case OptimizerKind::Adadelta: return 2;
    case OptimizerKind::Adam:
    case OptimizerKind::AdamW: return amsgrad ? 3 : 2;
    case OptimizerKind::NAdam:
    case OptimizerKind::RAdam:
    case OptimizerKind::LAMB: return 2;
  }
  return 0;
}
inline int optimizer_state_slots(const OptimizerConfig& c) {
  return optimizer_state_slots(c.kind, c.momentum != 0.0, c.centered, c.amsgrad);
}

// Doubles per segment in the optimizer's norm scratch: the sums of squares of its clipped-to-be
// gradient, of its parameters and of LAMB's direction (then one for the global sum).
constexpr int kSegmentNormSlots = 3;

// The passes over whole segments a config needs before its update (bits): the gradients' norms
// for norm clipping, and LAMB's parameter and direction norms for its trust ratio.
constexpr int kClipNormPass = 1, kTrustRatioPass = 2;
inline int optimizer_norm_passes(const OptimizerConfig& c) {
  return (c.clipnorm > 0.0 || c.global_clipnorm > 0.0 ? kClipNormPass : 0) |
         (c.kind == OptimizerKind::LAMB ? kTrustRatioPass : 0);
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
  double mu_product = 1.0;  // NAdam: the product of its momentum coefficients mu_1..mu_step
  // Data-parallel training: the row of the global batch where this rank's slice starts, so
  // dropout draws the masks a single process would (element index = (row_offset + row) * cols + col).
  int64_t row_offset = 0;
  // Data-parallel training: the rows of the global batch, which this rank's loss gradient is a
  // share of (dZ = d(loss sum of its rows) / gradient_rows, as a single process scales those rows);
  // 0: the batch's own rows. Read on the device, so a captured step serves every global batch.
  int64_t gradient_rows = 0;
};

}  // namespace fastmlp
