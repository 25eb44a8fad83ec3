// The interface every backend implements: memory, the dense-layer GEMMs with their fused
// element-wise work, the fused loss, the fused optimizer update and step capture.
//
// Matrices are row-major; a batch is `rows` samples, one per row. Weights use the Keras
// layout W[in][out]. Pointers passed to these methods are backend memory unless a parameter
// says "host". Nothing here knows about layers, models or epochs: that is Engine's job.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

#include "fastmlp/types.h"

namespace fastmlp {

// Thrown when a backend cannot allocate; Python sees MemoryError with this message.
class OutOfMemory : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A Dense kernel's gradient at a batch of one row, which the optimizer step forms itself instead
// of reading it from the gradient buffer: grads[offset + i * out + j] = x[i] * dz[j] (dW = x^T dz,
// in x out, row-major). The outer product is cheaper to recompute inside the update than to write
// to memory and read back (Backend::forms_kernel_gradients).
template <typename T>
struct KernelGradient {
  int64_t offset = 0;  // the kernel's segment in the flat buffers
  int in = 0, out = 0;
  const T* x = nullptr;   // the layer's input row
  const T* dz = nullptr;  // the gradient w.r.t. its pre-activation
  // The layer reads the batch itself and forms no input gradient, so the forward product of the
  // next batch row is the only read of the kernel before the engine calls
  // Backend::apply_deferred_decay: the step may defer the kernel's decay.
  bool deferrable = false;
};

template <typename T>
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;  // "cpu" or "cuda:<index>"

  // ---- memory (allocate returns zero-filled memory and throws on failure)
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* p) noexcept = 0;
  virtual void to_backend(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void to_host(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  virtual void fill(T* dst, T value, int64_t n) = 0;
  virtual void synchronize() {}
  // Waits for all work on the device, whoever queued it (before reading another library's arrays).
  virtual void synchronize_device() {}
  // Host memory for staging copies to the backend (page-locked on a GPU, so copies run at bus
  // speed); throws OutOfMemory on failure.
  virtual void* allocate_host(size_t bytes);
  virtual void release_host(void* p) noexcept;
  // Bytes a dataset may still take in backend memory before training data must be streamed from
  // the host (free device memory less a reserve for the workspace); unlimited on the host.
  virtual size_t memory_for_data() const { return SIZE_MAX; }
  // True when backend memory is the process's own (the CPU): host arrays can be used in place.
  virtual bool host_memory() const { return false; }
  // The queue the backend's work runs on, for a library that must order its own work with it
  // (NCCL: a cudaStream_t); null when calls complete before they return (the CPU).
  virtual void* native_stream() const { return nullptr; }

  // ---- one training step's pieces
  // The next batch: x_dst[i, :] = x[perm[counters->batch_start + i], :] for i < rows, and the
  // same rows of y into y_dst.
  virtual void gather_batch(int rows, int x_cols, int y_cols, const T* x, const T* y, const int32_t* perm,
                            const TrainCounters* counters, T* x_dst, T* y_dst) = 0;

  // Bytes of the record dense_forward may keep of an activation for dense_backward (cuBLASLt's
  // ReLU bit mask); 0 when the backend takes the derivative from the activation's output alone.
  virtual size_t activation_record_bytes(int /*rows*/, int /*cols*/, ActivationSpec /*act*/) const { return 0; }

  // Y = act(X W + b) with X rows x in, W in x out, Y rows x out. act is never softmax here:
  // the output layer is called with Linear and keeps its logits. When record is not null
  // (activation_record_bytes of backend memory) the backend may keep there what dense_backward
  // needs; returns true when it did.
  virtual bool dense_forward(int rows, int in, int out, const T* X, const T* W, const T* b, ActivationSpec act, T* Y,
                             void* record) = 0;

  // Given dZ (rows x out) of this layer: dW = X^T dZ (skipped when dW is null: the optimizer step
  // forms it, see KernelGradient), db = column sums of dZ unless db is null
  // (the call that made dZ summed it already) and, when dX is not null, dX = (dZ W^T) * x_act'(X),
  // i.e. the previous layer's dZ (X is that layer's output; x_record its record from dense_forward,
  // or null). Returns true when it also wrote the column sums of that dX into dX_bias_grad (the
  // previous layer's db, in the same GEMM), so that layer's call gets a null db.
  virtual bool dense_backward(int rows, int in, int out, const T* X, const void* x_record, const T* W, const T* dZ,
                              T* dW, T* db, T* dX, ActivationSpec x_act, T* dX_bias_grad) = 0;

  // ---- layer ops other than Dense. Each backward gets dY, the gradient of the loss w.r.t. the
  // op's output, and writes dX, the gradient w.r.t. its input X, multiplied by x_act'(X): the
  // derivative of the activation of the Dense op that produced X (Linear when none), as
  // dense_backward does. dX may be null (the op is the first): then only parameter gradients.

  // Y = act(X). act is never softmax (a final softmax is the loss's).
  virtual void activation_forward(int rows, int cols, const T* X, ActivationSpec act, T* Y) = 0;
  // Z = the model's output of its logits Z, in place, row by row: act per element, or softmax
  // (math::output_value; predict's last step).
  virtual void output_activation(int rows, int cols, ActivationSpec act, T* Z) = 0;
  // dX = dY * act'(Y) * x_act'(X). dX may be dY (an in-place pass).
  virtual void activation_backward(int rows, int cols, const T* X, const T* Y, const T* dY, ActivationSpec act,
                                   ActivationSpec x_act, T* dX) = 0;

  // Training only (inference skips the op): Y = X * keep / (1 - rate), keep drawn by
  // math::dropout_keep from (d.seed, counters->step, (counters->row_offset + row) * cols + col).
  virtual void dropout_forward(int rows, int cols, const T* X, DropoutSpec d, const TrainCounters* counters,
                               T* Y) = 0;
  // dX = dY * keep / (1 - rate) * x_act'(X), the same mask redrawn.
  virtual void dropout_backward(int rows, int cols, const T* X, const T* dY, DropoutSpec d,
                                const TrainCounters* counters, ActivationSpec x_act, T* dX) = 0;

  // Y = gamma * xhat + beta, xhat = (X - mean) * inv_std, inv_std = 1 / sqrt(var + epsilon), the
  // statistics over n.axis (gamma null: 1; beta null: 0). With stats_in (moving mean and
  // variance, `cols` each; Batch axis only) those are used and nothing else is written;
  // otherwise the batch's biased statistics are computed, xhat (rows x cols) and inv_std (cols
  // for Batch, rows for Features) kept for the backward pass, and, when mean_out / var_out are
  // not null, the mean and variance written there (Batch axis: the moving averages' targets).
  virtual void normalize_forward(NormSpec n, int rows, int cols, const T* X, const T* gamma, const T* beta,
                                 const T* mean_in, const T* var_in, T* Y, T* xhat, T* inv_std, T* mean_out,
                                 T* var_out) = 0;
  // From the forward pass's xhat and inv_std: dgamma = sums of dY * xhat and dbeta = sums of dY
  // over n.axis (skipped when null), and dX through the statistics (x_act'(X) applied).
  virtual void normalize_backward(NormSpec n, int rows, int cols, const T* X, const T* xhat, const T* inv_std,
                                  const T* gamma, const T* dY, T* dgamma, T* dbeta, ActivationSpec x_act,
                                  T* dX) = 0;

  // Loss of each row of logits Z against targets Y (rows x y_cols), summed into counters->loss_sum
  // and counters->metric_sum; sets counters->nonfinite on NaN/Inf. When dZ is not null it receives
  // d(mean loss)/dZ. weighted: Y's last column is each row's weight (math::row_weight): the loss
  // sum and dZ are weighted, the metric is not.
  virtual void loss(int rows, int n_out, const T* Z, const T* Y, int y_cols, bool weighted, Loss loss,
                    double loss_param, Metric metric,
                    ActivationSpec out_act, T* dZ, TrainCounters* counters) = 0;

  // Adds each row's contributions to the further metrics (math::metric_row) into slots, which
  // live in backend memory next to the counters (kMetricSlots doubles).
  virtual void metrics(int rows, int n_out, const T* Z, const T* Y, int y_cols, bool class_ids, Loss loss,
                       ActivationSpec out_act, MetricSet set, double* slots) = 0;

  // One fused update of all parameters, segment by segment (segments and config are backend
  // memory, so a captured step replays with the current learning rate). A moving-average
  // segment gets p = momentum * p + (1 - momentum) * grads[k] instead (kept when not finite),
  // no optimizer, decay or regularization; on skipped steps it is left alone too. Adds each segment's
  // L1/L2 gradient, and its penalty times `rows` into counters->reg_sum when any_regularizer.
  // state holds `slots` buffers of n_params each, back to back. The update is skipped when
  // counters->nonfinite; a parameter the update would make NaN/Inf keeps its value and sets it
  // (the others are updated). Then ends the step: counters->step += 1 unless the update was
  // skipped (an overflowing one counts), and counters->batch_start += rows.
  // Gradient clipping (config's clipvalue, clipnorm or global_clipnorm) applies to the gradient
  // plus regularizer before the update. norm_passes (optimizer_norm_passes of the config, known
  // on the host) says which sums over whole segments the step reduces first, into segment_norms:
  // backend memory for kSegmentNormSlots * n_segments + 1 doubles (math::segment_scale's layout).
  // kernel_grads (host array of n_kernel_grads, or null) lists kernel segments whose gradient is
  // not in grads but formed here from the layer's x and dz; only when rows is 1, norm_passes is 0
  // and forms_kernel_gradients().
  virtual void optimizer_step(int64_t n_params, T* params, const T* grads, T* state, int slots,
                              const ParamSegment* segments, int n_segments, bool any_regularizer,
                              const OptimizerConfig* config, int norm_passes, double* segment_norms,
                              TrainCounters* counters, int rows, const KernelGradient<T>* kernel_grads,
                              int n_kernel_grads) = 0;
  // Whether optimizer_step can form the kernel gradients of a one-row batch itself.
  virtual bool forms_kernel_gradients() const { return false; }
  // A backend may leave a deferrable kernel's decay pending (KernelGradient::deferrable: L2's
  // shrinking of every weight by the same factor), to apply a run of steps' factors at once.
  // The input row that a one-row forward pass multiplies with a deferrable kernel in place of
  // the batch row x (x scaled by the kernel's pending decay), or x. The engine asks before the
  // forward pass of a step that forms its kernel gradients.
  virtual const T* deferred_decay_input(T* /*params*/, const T* x) { return x; }
  // Applies all pending decay and stops deferring: params then hold what the steps left. The
  // engine calls it at the end of an epoch, when a training call fails, and before a step that
  // does not form its kernel gradients.
  virtual void apply_deferred_decay(T* /*params*/) {}
  // Leaves in params what the steps left, for others to read while the engine lets them in
  // between two steps or two training calls, such that the next step goes on exactly as if
  // they had not come (a fit's result must not depend on when another thread read the model);
  // if they wrote params meanwhile, the next step starts from what they wrote.
  virtual void expose_deferred_decay(T* /*params*/) {}

  // ---- curvature: the R-operator passes of Engine::hessian_vector_product
  // C = op(A) op(B), row-major and densely packed (C is m x n, the inner size k).
  virtual void matmul(bool ta, bool tb, int m, int n, int k, const T* A, const T* B, T* C) = 0;
  // Y += alpha * X over n elements.
  virtual void axpy(int64_t n, T alpha, const T* X, T* Y) = 0;
  // RD = RG * act'(A) + G * act''(A) * RZ over n elements (A the activation's output): the
  // R-operator of dZ = G * act'(A).
  virtual void activation_second_order(int64_t n, const T* A, const T* G, const T* RG, const T* RZ,
                                       ActivationSpec act, T* RD) = 0;
  // RDZ = (1/rows) * H_z(loss) RZ, row by row (math::loss_row_hessian_vector).
  virtual void loss_hessian_vector(int rows, int n_out, const T* Z, const T* Y, int y_cols, bool weighted, Loss loss,
                                   double loss_param,
                                   ActivationSpec out_act, const T* RZ, T* RDZ) = 0;

  // Runs `ops`, the backend calls of one step. A GPU backend captures them once per `shape` and
  // replays the capture, so `ops` must make the same calls with the same arguments whenever it is
  // given the same shape (the rows, and what else a step bakes in: a data-parallel rank's global
  // batch); reset_captures() drops captures after buffers move.
  virtual void run_step(int64_t /*shape*/, const std::function<void()>& ops) { ops(); }
  virtual void reset_captures() {}
};

template <typename T>
void* Backend<T>::allocate_host(size_t bytes) {
  void* p = bytes ? std::malloc(bytes) : nullptr;
  if (bytes && !p) throw OutOfMemory("out of host memory allocating " + std::to_string(bytes) + " bytes");
  return p;
}

template <typename T>
void Backend<T>::release_host(void* p) noexcept {
  std::free(p);
}

// Backend factories. make_backend("cpu") works everywhere; "cuda" or "cuda:N" loads the CUDA
// plugin and throws std::runtime_error with the reason when it cannot. precision is "float32",
// or for CUDA also "tf32" / "bf16" (GEMM operands only; accumulation, weights and optimizer
// state stay float32).
template <typename T>
std::unique_ptr<Backend<T>> make_backend(const std::string& device, const std::string& precision = "float32");

struct CudaInfo {
  bool available = false;
  int device_count = 0;
  std::string reason;       // why not available
  std::string description;  // GPU names, driver/runtime versions
  std::string build;        // CUDA version and archs the plugin was compiled for
};
CudaInfo cuda_info();

void set_num_threads(int n);
int get_num_threads();
std::string blas_info();

}  // namespace fastmlp
