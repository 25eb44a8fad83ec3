// Engine: one dense network with its loss and optimizer, trained on any Backend.
//
// Parameters, gradients and optimizer state are each one flat buffer; layer i's kernel W_i
// (in x out, Keras layout) is followed by its bias b_i. The engine owns the workspace
// (activations, gradients, counters) and sequences backend calls; it never touches element
// data itself except on the host side of get/set calls.
//
// Threads: every public method may be called from any thread. One engine has one workspace, so
// calls take turns on a first-come, first-served lock; a training call hands the lock over
// between steps when another thread waits, so a predict() during a long epoch waits one step,
// not the epoch, and sees the weights of a step boundary.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "fastmlp/backend.h"
#include "fastmlp/communicator.h"
#include "fastmlp/fair_mutex.h"
#include "fastmlp/lbfgs.h"
#include "fastmlp/model_spec.h"
#include "fastmlp/types.h"

namespace fastmlp {

enum class Memory { Backend, Host };

// Memory owned by a backend and freed with it: its own memory (device memory for CUDA), or host
// memory from allocate_host (page-locked on a GPU) for staging copies.
template <typename T, Memory Kind = Memory::Backend>
class BackendBuffer {
 public:
  BackendBuffer() = default;
  BackendBuffer(Backend<T>* backend, size_t bytes) : backend_(backend), bytes_(bytes) {
    if (bytes) ptr_ = Kind == Memory::Host ? backend->allocate_host(bytes) : backend->allocate(bytes);
  }
  ~BackendBuffer() { reset(); }
  BackendBuffer(BackendBuffer&& o) noexcept { *this = std::move(o); }
  BackendBuffer& operator=(BackendBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      backend_ = o.backend_;
      ptr_ = o.ptr_;
      bytes_ = o.bytes_;
      o.ptr_ = nullptr;
      o.bytes_ = 0;
    }
    return *this;
  }
  BackendBuffer(const BackendBuffer&) = delete;
  BackendBuffer& operator=(const BackendBuffer&) = delete;
  void reset() {
    if (ptr_ && backend_) {
      if (Kind == Memory::Host) backend_->release_host(ptr_);
      else backend_->release(ptr_);
    }
    ptr_ = nullptr;
    bytes_ = 0;
  }
  template <typename U = T>
  U* as() const { return static_cast<U*>(ptr_); }
  T* get() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  Backend<T>* backend_ = nullptr;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

template <typename T>
using HostBuffer = BackendBuffer<T, Memory::Host>;

// Inputs and targets resident in backend memory (uploaded once, or borrowed device memory).
// Any engine on the same device whose input width and target layout match may use it, so one
// upload can serve many models (e.g. the trials of a hyper-parameter search).
//
// Data too large for the backend's memory is *streamed*: the rows stay in a host copy and pass
// through the engine's chunk buffers in fit, evaluate and predict (x and y are null then).
template <typename T>
struct Dataset {
  std::shared_ptr<Backend<T>> owner;  // declared first: outlives the storage it frees
  BackendBuffer<T> x_storage, y_storage;
  const T* x = nullptr;
  const T* y = nullptr;
  bool streamed = false;
  const T* host_x = nullptr;  // streamed data only: the features in host memory, kept alive by
  std::shared_ptr<const void> host_owner;  // host_owner (our copy, or the caller's array)
  std::vector<T> host_y_copy;  // targets are always copied: checked ids must stay as checked
  const T* host_y = nullptr;   // = host_y_copy.data() (null without targets)
  bool has_targets() const { return y != nullptr || host_y != nullptr; }
  int64_t rows = 0;
  int x_cols = 0, y_cols = 0;
  std::string device;      // owner->name(): engines on another device cannot read this memory
  bool class_ids = false;  // y holds one class id per row (checked integers in [0, max_class])
  int64_t max_class = -1;  // largest class id in y
  // y's last column is each row's sample weight (y_cols = target columns + 1): the loss of a row
  // and its gradient are multiplied by it, the batch's mean still divides by the row count.
  bool weighted = false;
  uint64_t id = 0;  // changes whenever the memory behind x / y may have changed
};

struct EpochResult {
  double loss = 0.0;    // mean data loss + mean regularization penalty
  double metric = 0.0;  // mean metric (accuracy, binary accuracy or MAE)
  bool nonfinite = false;
  int64_t steps = 0;    // batches trained (in this epoch so far, for train_batches)
  int64_t rows = 0;     // rows those batches held
  bool finished = true; // train_batches: the epoch's last batch has run
  std::vector<double> metric_slots;  // the further metrics' sums (spec.metrics), when there are any
};

template <typename T>
class Engine {
 public:
  Engine(ModelSpec spec, const std::string& device, const std::string& precision = "float32");
  ~Engine();

  // Fixed at construction: no lock needed.
  const ModelSpec& spec() const { return spec_; }
  std::string device() const { return device_; }
  int64_t num_params() const { return num_params_; }
  const std::vector<ParamSegment>& segments() const { return segments_; }

  // Called between steps and batches of long calls, at most every `interval`, with the engine
  // locked (so it must not call the engine); it ends the call by throwing (Python's Ctrl-C: the
  // bindings poll the interpreter's signal handlers). The engine is left at a step boundary.
  void set_interrupt_poll(std::function<void()> poll,
                          std::chrono::milliseconds interval = std::chrono::milliseconds(50));

  // Host copies of the flat buffers (num_params() values; state: slots * num_params()).
  void get_params(T* host) const;
  void set_params(const T* host);
  int state_slots() const;
  std::vector<T> get_state() const;
  // Throws std::invalid_argument unless count == state_slots() * num_params().
  void set_state(const T* host, int64_t count);
  int64_t step() const;
  void set_step(int64_t step);
  // Parameters, optimizer state and step read under one lock: a consistent checkpoint even
  // while another thread trains.
  struct Snapshot {
    std::vector<T> params, state;
    int64_t step = 0;
  };
  Snapshot snapshot() const;

  // Replaces the optimizer; state is zeroed (Adagrad's initial accumulator applied) when the
  // kind or the slot layout changes or when reset is true.
  void set_optimizer(const OptimizerConfig& config, bool reset = true);
  const OptimizerConfig& optimizer() const { return config_; }
  void set_learning_rate(double lr);

  // Copies host arrays into backend memory (x: rows x input_dim, y: rows x target_columns), or,
  // when they exceed data_budget() (or the allocation fails), keeps them in host memory to be
  // streamed: x read in place when `keep` keeps it alive as long as it lives, else from a copy;
  // y always from a copy (class ids are checked once, here).
  // weighted: y has one more column, each row's sample weight (finite, >= 0; checked here).
  // borrow: where backend memory is host memory (the CPU), x is read in place, kept alive by
  // `keep`, instead of copied (a fit on arrays the caller holds anyway); y is copied as always.
  std::shared_ptr<Dataset<T>> upload(const T* x, const T* y, int64_t rows,
                                     std::shared_ptr<const void> keep = nullptr, bool weighted = false,
                                     bool borrow = false) const;
  // Bytes of backend memory a dataset may take before it is streamed: the backend's figure
  // (free GPU memory less a reserve; unlimited on the CPU) unless set here (tests, or to leave
  // GPU memory to others). nullopt restores the backend's figure.
  size_t data_budget() const;
  void set_data_budget(std::optional<size_t> bytes);
  // Copies `bytes` of backend memory at `src` (e.g. a device array of another library) to host.
  void read_backend_memory(const void* src, size_t bytes, void* host) const;
  // Uses features already in backend memory (device pointers for CUDA) without a copy, the
  // caller keeping them alive and unchanged; or, with own_copy, copies them into new backend
  // memory. Targets, if any, are host memory and are copied.
  std::shared_ptr<Dataset<T>> borrow(const T* x_backend, const T* y_host, int64_t rows, bool own_copy = false,
                                     bool weighted = false) const;

  // Data-parallel training (null: off; a communicator of one rank runs the same path alone, for
  // tests and benchmarks of it). While set, train_epoch and train_batches train every rank on its
  // contiguous slice of each batch of `perm` (the global order and global batch, the same on every
  // rank; data resident and replicated): the loss gradient is scaled by the global batch rows and
  // the gradient buffer summed over the ranks between the backward pass and the update, with the
  // step's non-finite flag, so every rank applies the same update; their epoch results are the
  // global ones. The communicator must sum this backend's memory (Communicator::device: MPI for
  // the CPU, NCCL on this GPU).
  void set_communicator(std::shared_ptr<Communicator> communicator);
  // One epoch over data in the order `perm` (host, data.rows entries), in batches of batch_size
  // with a last partial batch. Stops updating at the first non-finite loss.
  // Sharded data-parallel epochs (shard_global_rows >= 0, a communicator set): data is this rank's
  // own shard (perm a permutation of it), the epoch has shard_global_rows rows over all ranks, and
  // this rank's slice of each global batch takes the next rows of its shard in the order perm,
  // going round the shard and starting where the last epoch on the same shard stopped.
  EpochResult train_epoch(const Dataset<T>& data, const std::vector<int32_t>& perm, int batch_size,
                          int64_t shard_global_rows = -1);
  // The same epoch in pieces, for callers that act between batches (every-N-batches callbacks):
  // begin_epoch uploads the order; each train_batches runs up to max_batches of the remaining
  // batches and returns the epoch so far (means over the rows trained so far). The result is
  // bit-identical to train_epoch's however the batches are split.
  void begin_epoch(const Dataset<T>& data, const std::vector<int32_t>& perm, int batch_size,
                   int64_t shard_global_rows = -1);
  EpochResult train_batches(const Dataset<T>& data, int64_t max_batches);
  bool epoch_in_progress() const;
  void end_epoch();  // abandons an unfinished epoch (e.g. stopped early)
  // Mean loss (with the regularization penalty) and metric, no update. across_ranks (with a
  // communicator set): data is this rank's part of the rows, and the result is over all ranks' parts.
  EpochResult evaluate(const Dataset<T>& data, int batch_size, bool across_ranks = false);
  // Output of the last layer's activation for each row of data, into host memory.
  void predict(const Dataset<T>& data, int batch_size, T* out_host);
  // Gradient of mean loss + penalty over all rows (host, num_params values); returns that loss.
  // Training mode (dropout with the masks of the current step, batch statistics), nothing
  // updated; the entries of moving statistics are 0.
  double compute_gradients(const Dataset<T>& data, T* grads_host);
  // Mean loss + penalty over all rows as one batch in training mode, exactly the loss that
  // compute_gradients differentiates (gradcheck's finite differences); nothing updated.
  double training_loss(const Dataset<T>& data);

  // One torch.optim.LBFGS step over the whole of `data` (lbfgs.h): up to config.max_iter
  // iterations, each a full-batch forward and backward pass in training mode. The history is
  // kept between calls until reset_lbfgs (or a new optimizer) clears it. A non-finite loss or
  // step leaves the parameters as the call found them and sets `nonfinite`; so does an error.
  struct LbfgsOutcome {
    double loss = 0.0;    // at the parameters the call started from
    double metric = 0.0;  // the model's metric there
    int evaluations = 0;
    int iterations = 0;
    bool nonfinite = false;
  };
  LbfgsOutcome lbfgs_step(const Dataset<T>& data, const LbfgsConfig& config);

  // H v for the Hessian H of mean loss + penalty over `data` (training mode) at the current
  // parameters, exactly (R-operator, curvature.cpp), for k vectors at once (one ordinary
  // forward/backward pass, then one R-pass each); v and hv are host arrays of k x num_params().
  // Returns the loss. Models of Dense layers only; the data must be resident.
  double hessian_vector_product(const Dataset<T>& data, int64_t k, const T* v_host, T* hv_host);
  void reset_lbfgs();
  // One optimizer step on exactly these rows; returns the loss before the step. A step whose
  // loss or update is not finite is undone whole (weights, state and step as before; nonfinite set
  // in the result).
  EpochResult train_on_batch(const Dataset<T>& data);

  // Throws std::invalid_argument naming `what` when data cannot be used by this engine: another
  // device, another input width, another target layout, class ids beyond the outputs, or no
  // targets where they are needed.
  void check_dataset(const Dataset<T>& data, const char* what, bool needs_targets) const;

  // Diagnostics of the last forward-backward pass, both 0 on the CPU: layers that kept an
  // activation record (cuBLASLt's ReLU mask), and layers whose activation derivative and bias
  // gradient came from the epilogue of the next layer's backward GEMM (DRELU_BGRAD).
  int activation_records_kept() const;
  int fused_backward_layers() const;

 private:
  // A layer op as the engine runs it, after lowering: a Dense with a linear activation takes the
  // Activation layer after it, and the model's final activation goes to the loss.
  struct Op {
    LayerKind kind = LayerKind::Dense;
    int in = 0, out = 0;
    ActivationSpec act;  // Dense, Activation
    DropoutSpec dropout;
    NormSpec norm;
    LayerParams params;
    bool keeps_record = false;  // a hidden Dense followed by a Dense (cuBLASLt's ReLU mask)
    bool needs_input_grad = false;  // some earlier op has trainable parameters
  };
  void lower(const std::vector<LayerParams>& layout);
  using Lock = std::unique_lock<FairMutex>;
  Lock lock() const { return Lock(mutex_); }
  // Between two steps of a training call: lets a waiting thread in (the lock is handed over
  // first-come, first-served) and polls for an interrupt.
  void between_steps(Lock& held);
  void poll_interrupt();
  bool poll_due();  // an interrupt poll is set and its interval has passed (then restarts it)
  // The unlocked bodies of the public methods of the same names, for calls from inside.
  void download_params(T* host) const;
  std::vector<T> download_state() const;
  void store_step(int64_t step);
  size_t budget() const { return data_budget_ ? *data_budget_ : backend_->memory_for_data(); }
  void begin_epoch_locked(const Dataset<T>& data, const std::vector<int32_t>& perm, int batch_size,
                          int64_t shard_global_rows = -1);
  EpochResult train_batches_locked(const Dataset<T>& data, int64_t max_batches, Lock& held);
  void ensure_workspace(int rows);
  // train: training mode (dropout, batch statistics left in the gradient buffer for the moving
  // averages) with a backward pass to follow, so the backend may keep activation records;
  // counters give the step that keys dropout masks.
  void forward(int rows, const T* X, bool train, const TrainCounters* counters);
  // After the loss wrote the logits' gradient into dz_.back(). With `formed` (not null), Dense
  // kernels' gradients are not written: each is listed there for the optimizer step to form.
  void backward(int rows, const T* X, const TrainCounters* counters,
                std::vector<KernelGradient<T>>* formed = nullptr);
  // The output (logits) of the last forward pass.
  const T* logits() const { return outputs_.back(); }
  int n_out() const { return ops_.back().out; }
  // global_rows: the global batch of a data-parallel step (this rank's `rows` may be 0), else 0.
  void train_step(int rows, const Dataset<T>& data, int global_rows = 0);
  bool parallel() const { return communicator_ != nullptr; }
  // A sharded epoch's rows this rank trains: the sum of its slices of the global batches.
  int64_t shard_rows(int64_t global_rows, int batch_size) const;
  // Data-parallel: sums this rank's gradient (the loss already scaled it to the global batch)
  // over the ranks with the step's non-finite flag.
  void reduce_gradients(int rows, int global_rows);
  // Data-parallel: sums an epoch's or evaluation's sums and metric slots over the ranks, in
  // place, in one collective.
  void sum_over_ranks(std::vector<double>& scalars, std::vector<double>& metric_slots);
  // Data-parallel: this rank's contiguous rows [lo, hi) of a global batch of global_rows (every
  // place that splits a batch over the ranks uses this one rule).
  struct Slice {
    int64_t lo, hi;
  };
  Slice rank_slice(int64_t global_rows) const;
  // Forward, loss and backward over all rows of data as one batch (gradients land in grads_).
  // Forward (training mode) and loss over all rows of data as one batch, into `counters` reset
  // to the current step (which keys dropout masks), and the backward pass unless with_backward
  // is false.
  TrainCounters gradients_of_whole(const Dataset<T>& data, BackendBuffer<T>& counters, bool with_backward = true);
  void reset_counters(BackendBuffer<T>& counters, bool keep_step);
  TrainCounters read_counters(const BackendBuffer<T>& counters) const;
  // The further metrics' sums, kept in the counters buffer after the TrainCounters.
  double* metric_slots(BackendBuffer<T>& counters);
  std::vector<double> read_metric_slots(const BackendBuffer<T>& counters) const;
  void zero_metric_slots(BackendBuffer<T>& counters);
  // The further metrics of a batch whose loss was just computed (nothing when there are none).
  void add_metrics(int rows, const T* y, const Dataset<T>& data, BackendBuffer<T>& counters);
  void write_counters(BackendBuffer<T>& counters, const TrainCounters& c);
  double regularization_penalty() const;
  // Mean loss + penalty of `data` in training mode and its gradient (host), the lock held.
  double loss_and_gradients(const Dataset<T>& data, T* grads_host, double* metric_mean = nullptr);
  LbfgsState lbfgs_;
  void upload_config();
  // Copies host rows into new backend memory of d (x_storage, y_storage), whatever the budget.
  void make_resident(Dataset<T>& d, const T* x, const T* y) const;
  // Streaming: chunk buffers for `data` in batches of bs; returns the chunk's rows (a multiple
  // of bs), and points stream_.view at the buffers.
  int64_t prepare_stream(const Dataset<T>& data, int bs);
  // Copies rows [first, first + rows) of streamed data into the chunk buffers, in the order
  // order[first..] when order is not null (a host gather into page-locked staging memory).
  void load_chunk(const Dataset<T>& data, const int32_t* order, int64_t first, int64_t rows);
  void set_batch_start(int64_t position);
  // Copies an order (host, rows entries) into perm_, growing it when needed.
  void upload_order(const int32_t* order, int64_t rows);
  // Streamed epoch: chunk buffers for batches of bs and the identity order over a chunk.
  void prepare_stream_epoch(const Dataset<T>& data, int bs);
  // Calls f(rows, x, y) for consecutive batches of bs rows of data in backend memory (y null
  // without targets), streaming chunks through the chunk buffers when data is streamed.
  template <typename F>
  void for_each_batch(const Dataset<T>& data, int bs, F&& f);

  ModelSpec spec_;
  std::vector<Op> ops_;
  ActivationSpec out_act_;         // applied to the logits by the loss (and by predict)
  bool logits_activated_ = false;  // the last op is a Dense whose activation stays (a final
                                   // Activation follows it): the loss gradient needs its derivative
  std::shared_ptr<Backend<T>> backend_;  // shared with the datasets it holds
  std::string device_;
  mutable FairMutex mutex_;  // guards everything below
  std::function<void()> interrupt_poll_;
  std::shared_ptr<Communicator> communicator_;
  struct {  // sharded epochs: where the next one starts in its shard's order
    uint64_t dataset = 0;
    int64_t next = 0;
  } shard_cursor_;
  std::chrono::milliseconds poll_interval_{50};
  std::chrono::steady_clock::time_point last_poll_{};
  int64_t num_params_ = 0;
  std::vector<ParamSegment> segments_;
  bool any_regularizer_ = false;
  OptimizerConfig config_;
  int slots_ = 0;

  BackendBuffer<T> params_, grads_, state_, segments_dev_, config_dev_;
  BackendBuffer<T> segment_norms_;  // the optimizer's per-segment norm scratch (doubles)
  BackendBuffer<T> undo_;  // train_on_batch: parameters and state before the step
  BackendBuffer<T> train_counters_, eval_counters_;
  // Workspace for `capacity_` rows.
  int capacity_ = 0;
  BackendBuffer<T> x_batch_, y_batch_, perm_;
  int64_t perm_capacity_ = 0;
  std::vector<BackendBuffer<T>> acts_, dz_;
  std::vector<BackendBuffer<T>> xhat_, inv_std_;  // normalization ops: kept for their backward
  std::vector<const T*> outputs_;  // each op's output in the last forward pass (inference
                                   // dropout passes its input on)
  // Per layer: what the backend keeps of its activation for the backward pass (cuBLASLt's ReLU
  // mask; empty on the CPU), and whether the last forward pass for a backward one wrote it.
  std::vector<BackendBuffer<T>> records_;
  std::vector<bool> record_kept_;
  int fused_backward_layers_ = 0;
  // The kernel gradients the last one-row step left to the optimizer (kept to reuse its memory).
  std::vector<KernelGradient<T>> formed_kernel_grads_;
  uint64_t captured_dataset_ = 0;
  struct EpochProgress {  // the epoch begun by begin_epoch
    bool open = false;
    uint64_t generation = 0;  // which begin_epoch made it
    uint64_t dataset = 0;
    int batch_size = 0;
    int64_t batches_done = 0, rows_done = 0;  // rows over all ranks in data-parallel epochs
    int64_t total_rows = 0;  // the epoch's rows (over all ranks)
    std::vector<int32_t> order;  // streamed data: the epoch's permutation, applied on the host
    int64_t chunk_rows = 0, loaded_to = 0;  // streamed data: chunk size, rows loaded so far
  } epoch_;
  uint64_t epochs_begun_ = 0;
  std::optional<size_t> data_budget_;
  struct StreamBuffers {  // where streamed data passes through, one chunk at a time
    BackendBuffer<T> x, y;
    HostBuffer<T> staging;  // gathered rows (x then y) before the copy to the backend
    Dataset<T> view;        // x / y pointing at the buffers, as the steps see them
    bool holds_epoch_chunk = false;  // false once evaluate/predict reused the buffers
  } stream_;
};

}  // namespace fastmlp
