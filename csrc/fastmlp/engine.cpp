// Engine: the training loop and its counters, datasets and streaming, get/set, and the order
// of backend calls in a step. The network itself (ops, workspace, forward, backward) is in
// network.cpp.
#include "fastmlp/engine.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "fastmlp/math.h"
#include "fastmlp/random.h"

namespace fastmlp {

template <typename T>
Engine<T>::Engine(ModelSpec spec, const std::string& device, const std::string& precision)
    : spec_(std::move(spec)) {
  validate(spec_);
  backend_ = make_backend<T>(device, precision);
  device_ = backend_->name();
  const std::vector<LayerParams> layout = parameter_layout(spec_, &num_params_);
  // One segment per parameter tensor, in layout order: kernels carry their layer's regularizer
  // (biases, gamma and beta never do), moving statistics are averaged, not trained.
  for (size_t i = 0; i < layout.size(); ++i) {
    const LayerSpec& l = spec_.layers[i];
    const LayerParams& p = layout[i];
    auto add = [&](int64_t offset, int64_t size, double l1, double l2, bool moving) {
      if (offset < 0) return;
      ParamSegment s;
      s.offset = offset;
      s.size = size;
      s.l1 = l1;
      s.l2 = l2;
      s.moving_average = moving;
      s.momentum = moving ? l.momentum : 0.0;
      segments_.push_back(s);
    };
    add(p.w, int64_t(p.in) * p.out, l.l1, l.l2, false);
    add(p.b, p.out, 0, 0, false);
    add(p.gamma, p.out, 0, 0, false);
    add(p.beta, p.out, 0, 0, false);
    add(p.moving_mean, p.out, 0, 0, true);
    add(p.moving_var, p.out, 0, 0, true);
    any_regularizer_ = any_regularizer_ || (l.kind == LayerKind::Dense && (l.l1 != 0.0 || l.l2 != 0.0));
  }
  lower(layout);
  Backend<T>* be = backend_.get();
  params_ = BackendBuffer<T>(be, sizeof(T) * num_params_);
  grads_ = BackendBuffer<T>(be, sizeof(T) * num_params_);
  segments_dev_ = BackendBuffer<T>(be, sizeof(ParamSegment) * segments_.size());
  be->to_backend(segments_dev_.get(), segments_.data(), sizeof(ParamSegment) * segments_.size());
  segment_norms_ = BackendBuffer<T>(be, sizeof(double) * (kSegmentNormSlots * segments_.size() + 1));
  config_dev_ = BackendBuffer<T>(be, sizeof(OptimizerConfig));
  // Each counters buffer holds the TrainCounters, then kMetricSlots doubles of metric sums.
  train_counters_ = BackendBuffer<T>(be, sizeof(TrainCounters) + sizeof(double) * kMetricSlots);
  eval_counters_ = BackendBuffer<T>(be, sizeof(TrainCounters) + sizeof(double) * kMetricSlots);
  set_optimizer(OptimizerConfig{}, true);
}

template <typename T>
Engine<T>::~Engine() {
  // Captured steps point at this engine's buffers; datasets may keep the backend alive.
  backend_->reset_captures();
  // Buffers must go before the backend that owns their memory.
  acts_.clear();
  dz_.clear();
  records_.clear();
  xhat_.clear();
  inv_std_.clear();
  x_batch_.reset(); y_batch_.reset(); perm_.reset();
  params_.reset(); grads_.reset(); state_.reset(); undo_.reset();
  segments_dev_.reset(); segment_norms_.reset(); config_dev_.reset(); train_counters_.reset(); eval_counters_.reset();
}

template <typename T>
void Engine<T>::set_interrupt_poll(std::function<void()> poll, std::chrono::milliseconds interval) {
  auto held = lock();
  interrupt_poll_ = std::move(poll);
  poll_interval_ = interval;
}

template <typename T>
bool Engine<T>::poll_due() {
  if (!interrupt_poll_) return false;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_poll_ < poll_interval_) return false;
  last_poll_ = now;
  return true;
}

template <typename T>
void Engine<T>::poll_interrupt() {
  if (poll_due()) interrupt_poll_();
}

template <typename T>
void Engine<T>::between_steps(Lock& held) {
  const bool contended = mutex_.contended(), poll_now = poll_due();
  // Whoever comes in sees (and may change) the parameters the steps so far have left.
  if (contended || poll_now) backend_->expose_deferred_decay(params_.get());
  if (contended) {  // the waiting threads go first, in the order they came
    held.unlock();
    held.lock();
  }
  if (poll_now) {
    const std::function<void()> poll = interrupt_poll_;
    // Unlocked: a signal handler may use the model (save a checkpoint, read the weights) at
    // this step boundary. If it throws (KeyboardInterrupt), the call ends here, unlocked.
    held.unlock();
    poll();
    held.lock();
  }
}

template <typename T>
void Engine<T>::download_params(T* host) const {
  backend_->to_host(host, params_.get(), sizeof(T) * num_params_);
}

template <typename T>
void Engine<T>::get_params(T* host) const {
  auto held = lock();
  download_params(host);
}

template <typename T>
void Engine<T>::set_params(const T* host) {
  auto held = lock();
  backend_->to_backend(params_.get(), host, sizeof(T) * num_params_);
}

template <typename T>
int Engine<T>::state_slots() const {
  auto held = lock();
  return slots_;
}

template <typename T>
std::vector<T> Engine<T>::download_state() const {
  std::vector<T> host(size_t(num_params_) * slots_);
  if (slots_) backend_->to_host(host.data(), state_.get(), sizeof(T) * host.size());
  return host;
}

template <typename T>
std::vector<T> Engine<T>::get_state() const {
  auto held = lock();
  return download_state();
}

template <typename T>
void Engine<T>::set_state(const T* host, int64_t count) {
  auto held = lock();
  if (count != num_params_ * slots_)
    throw std::invalid_argument("optimizer state has " + std::to_string(count) + " values, the optimizer keeps " +
                                std::to_string(num_params_ * slots_));
  if (slots_) backend_->to_backend(state_.get(), host, sizeof(T) * num_params_ * slots_);
}

template <typename T>
typename Engine<T>::Snapshot Engine<T>::snapshot() const {
  auto held = lock();
  Snapshot s;
  s.params.resize(num_params_);
  download_params(s.params.data());
  s.state = download_state();
  s.step = read_counters(train_counters_).step;
  return s;
}

template <typename T>
int64_t Engine<T>::step() const {
  auto held = lock();
  return read_counters(train_counters_).step;
}

template <typename T>
void Engine<T>::set_step(int64_t step) {
  auto held = lock();
  store_step(step);
}

template <typename T>
void Engine<T>::store_step(int64_t step) {
  TrainCounters c = read_counters(train_counters_);
  c.step = step;
  // NAdam's running product follows from the step (one pass here, then one factor per update).
  c.mu_product = config_.kind == OptimizerKind::NAdam ? math::nadam_mu_product(config_, step) : 1.0;
  write_counters(train_counters_, c);
}

template <typename T>
size_t Engine<T>::data_budget() const {
  auto held = lock();
  return budget();
}

template <typename T>
void Engine<T>::set_data_budget(std::optional<size_t> bytes) {
  auto held = lock();
  data_budget_ = bytes;
}

template <typename T>
void Engine<T>::read_backend_memory(const void* src, size_t bytes, void* host) const {
  auto held = lock();
  backend_->to_host(host, src, bytes);
}

template <typename T>
bool Engine<T>::epoch_in_progress() const {
  auto held = lock();
  return epoch_.open;
}

template <typename T>
void Engine<T>::end_epoch() {
  auto held = lock();
  epoch_.open = false;
}

template <typename T>
int Engine<T>::activation_records_kept() const {
  auto held = lock();
  return int(std::count(record_kept_.begin(), record_kept_.end(), true));
}

template <typename T>
int Engine<T>::fused_backward_layers() const {
  auto held = lock();
  return fused_backward_layers_;
}

template <typename T>
void Engine<T>::upload_config() {
  backend_->to_backend(config_dev_.get(), &config_, sizeof config_);
}

template <typename T>
void Engine<T>::set_optimizer(const OptimizerConfig& config, bool reset) {
  validate(config);
  auto held = lock();
  const int slots = optimizer_state_slots(config);
  const bool layout_changed = slots != slots_ || config.kind != config_.kind;
  // A captured step has the norm passes or not: re-record it when that changes.
  if (optimizer_norm_passes(config) != optimizer_norm_passes(config_)) {
    backend_->reset_captures();
    captured_dataset_ = 0;
  }
  // The new state first: if it cannot be allocated, the engine keeps its optimizer whole.
  BackendBuffer<T> new_state;
  if (slots != slots_) new_state = BackendBuffer<T>(backend_.get(), sizeof(T) * num_params_ * slots);
  config_ = config;
  upload_config();
  if (layout_changed || reset) {
    if (slots != slots_) {
      backend_->reset_captures();  // captured steps point at the old state
      captured_dataset_ = 0;
      state_ = std::move(new_state);
      slots_ = slots;
    }
    if (slots_) backend_->fill(state_.get(), T(0), num_params_ * slots_);
    if (config_.kind == OptimizerKind::Adagrad)
      backend_->fill(state_.get(), T(config_.initial_accumulator_value), num_params_);
    store_step(0);
    lbfgs_ = LbfgsState{};
  } else {
    store_step(read_counters(train_counters_).step);  // the same step under the new config
  }
}

template <typename T>
void Engine<T>::set_learning_rate(double lr) {
  if (!(std::isfinite(lr) && lr >= 0.0)) throw std::invalid_argument("lr must be a finite number >= 0");
  auto held = lock();
  config_.lr = lr;
  upload_config();
}

template <typename T>
void Engine<T>::set_communicator(std::shared_ptr<Communicator> communicator) {
  auto held = lock();
  if (epoch_.open) throw std::logic_error("the communicator cannot change while an epoch is in progress");
  if (communicator) {
    // It sums the gradient buffer where it lives: host memory, or this GPU's.
    const std::string memory = backend_->host_memory() ? std::string("cpu") : backend_->name();
    if (communicator->device() != memory)
      throw std::invalid_argument(
          "data-parallel training: a communicator for " + communicator->device() + " cannot sum the gradients of a "
          "model on " + device_ + (memory == "cpu" ? " (CPU ranks communicate through MPI: launch with mpiexec)"
                                                   : " (GPU ranks need an NCCL communicator on the model's GPU)"));
  }
  // A captured step holds the old communicator's collectives (NCCL's): none may replay with
  // another, or outlive it (destroying an NCCL communicator waits for the graphs that hold it).
  if (communicator != communicator_) backend_->reset_captures();
  communicator_ = std::move(communicator);
}

template <typename T>
void Engine<T>::sum_over_ranks(std::vector<double>& scalars, std::vector<double>& metric_slots) {
  std::vector<double> values = scalars;
  values.insert(values.end(), metric_slots.begin(), metric_slots.end());
  communicator_->allreduce_sum(values.data(), int64_t(values.size()));
  std::copy(values.begin(), values.begin() + scalars.size(), scalars.begin());
  std::copy(values.begin() + scalars.size(), values.end(), metric_slots.begin());
}

template <typename T>
typename Engine<T>::Slice Engine<T>::rank_slice(int64_t global_rows) const {
  const int64_t rank = communicator_->rank(), ranks = communicator_->size();
  return {global_rows * rank / ranks, global_rows * (rank + 1) / ranks};
}

template <typename T>
void Engine<T>::reduce_gradients(int rows, int global_rows) {
  Backend<T>* be = backend_.get();
  // The loss already scaled dZ to the global batch (TrainCounters::gradient_rows). Moving-average
  // segments hold this rank's batch statistics instead: weighted here by its share of the rows,
  // their sum is the row-weighted mean (share - 1 because axpy adds: g + (share - 1) g).
  if (rows > 0 && rows < global_rows) {
    const T share = T(double(rows) / double(global_rows));
    for (const ParamSegment& s : segments_)
      if (s.moving_average) be->axpy(s.size, share - T(1), grads_.get() + s.offset, grads_.get() + s.offset);
  }
  auto* counters = train_counters_.template as<TrainCounters>();
  communicator_->allreduce_gradients(grads_.get(), num_params_, &counters->nonfinite, be->native_stream());
}

template <typename T>
void Engine<T>::train_step(int rows, const Dataset<T>& data, int global_rows) {
  Backend<T>* be = backend_.get();
  auto* counters = train_counters_.template as<TrainCounters>();
  formed_kernel_grads_.clear();
  // A one-row batch leaves its kernels' gradients to the update (KernelGradient), unless the
  // whole gradient must exist first: for norm passes, or to be summed over ranks.
  const bool form =
      rows == 1 && be->forms_kernel_gradients() && global_rows == 0 && optimizer_norm_passes(config_) == 0;
  if (!form) be->apply_deferred_decay(params_.get());  // this step reads and updates every row
  if (rows > 0) {
    be->gather_batch(rows, data.x_cols, data.y_cols, data.x, data.y, perm_.template as<int32_t>(), counters,
                     x_batch_.get(), y_batch_.get());
    // The first kernel's product may need its input scaled by the decay deferred so far; its
    // gradient (backward) takes the batch row itself.
    forward(rows, form ? be->deferred_decay_input(params_.get(), x_batch_.get()) : x_batch_.get(), true, counters);
    be->loss(rows, n_out(), logits(), y_batch_.get(), data.y_cols, data.weighted, spec_.loss, spec_.loss_param,
             spec_.metric, out_act_, dz_.back().get(), counters);
    add_metrics(rows, y_batch_.get(), data, train_counters_);
    backward(rows, x_batch_.get(), counters, form ? &formed_kernel_grads_ : nullptr);
  } else {  // a data-parallel rank whose slice of a small last batch is empty adds nothing
    be->fill(grads_.get(), T(0), num_params_);
  }
  if (global_rows > 0) reduce_gradients(rows, global_rows);
  be->optimizer_step(num_params_, params_.get(), grads_.get(), state_.get(), slots_, segments_dev_.template as<ParamSegment>(),
                     int(segments_.size()), any_regularizer_, config_dev_.template as<OptimizerConfig>(),
                     optimizer_norm_passes(config_), segment_norms_.template as<double>(), counters, rows,
                     formed_kernel_grads_.data(), int(formed_kernel_grads_.size()));
}

template <typename T>
void Engine<T>::reset_counters(BackendBuffer<T>& counters, bool keep_step) {
  TrainCounters c;
  if (keep_step) {
    const TrainCounters old = read_counters(counters);
    c.step = old.step;
    c.mu_product = old.mu_product;
  }
  write_counters(counters, c);
  zero_metric_slots(counters);
}

template <typename T>
void Engine<T>::zero_metric_slots(BackendBuffer<T>& counters) {
  if (spec_.metrics.count == 0) return;
  static const std::vector<double> zeros(kMetricSlots, 0.0);
  backend_->to_backend(metric_slots(counters), zeros.data(), sizeof(double) * kMetricSlots);
}

template <typename T>
double* Engine<T>::metric_slots(BackendBuffer<T>& counters) {
  static_assert(sizeof(TrainCounters) % alignof(double) == 0, "the metric sums follow the counters");
  return reinterpret_cast<double*>(reinterpret_cast<char*>(counters.template as<TrainCounters>()) +
                                   sizeof(TrainCounters));
}

template <typename T>
std::vector<double> Engine<T>::read_metric_slots(const BackendBuffer<T>& counters) const {
  std::vector<double> slots;
  if (spec_.metrics.count == 0) return slots;
  slots.resize(kMetricSlots);
  const char* base = reinterpret_cast<const char*>(counters.template as<TrainCounters>());
  backend_->to_host(slots.data(), base + sizeof(TrainCounters), sizeof(double) * kMetricSlots);
  return slots;
}

template <typename T>
void Engine<T>::add_metrics(int rows, const T* y, const Dataset<T>& data, BackendBuffer<T>& counters) {
  if (spec_.metrics.count == 0) return;
  backend_->metrics(rows, n_out(), logits(), y, data.y_cols, data.class_ids, spec_.loss, out_act_, spec_.metrics,
                    metric_slots(counters));
}

template <typename T>
void Engine<T>::write_counters(BackendBuffer<T>& counters, const TrainCounters& c) {
  backend_->to_backend(counters.get(), &c, sizeof c);
}

template <typename T>
TrainCounters Engine<T>::read_counters(const BackendBuffer<T>& counters) const {
  TrainCounters c;
  backend_->to_host(&c, counters.get(), sizeof c);
  return c;
}

template <typename T>
void Engine<T>::set_batch_start(int64_t position) {
  TrainCounters c = read_counters(train_counters_);
  c.batch_start = position;
  write_counters(train_counters_, c);
}

template <typename T>
void Engine<T>::upload_order(const int32_t* order, int64_t rows) {
  if (perm_capacity_ < rows) {
    perm_ = BackendBuffer<T>(backend_.get(), sizeof(int32_t) * rows);
    perm_capacity_ = rows;
    backend_->reset_captures();
    captured_dataset_ = 0;
  }
  if (rows) backend_->to_backend(perm_.get(), order, sizeof(int32_t) * rows);
}

template <typename T>
void Engine<T>::begin_epoch(const Dataset<T>& data, const std::vector<int32_t>& perm, int batch_size,
                            int64_t shard_global_rows) {
  auto held = lock();
  begin_epoch_locked(data, perm, batch_size, shard_global_rows);
}

template <typename T>
int64_t Engine<T>::shard_rows(int64_t global_rows, int batch_size) const {
  const int64_t bs = std::min<int64_t>(batch_size, std::max<int64_t>(global_rows, 1));
  int64_t rows = 0;
  for (int64_t first = 0; first < global_rows; first += bs) {
    const Slice s = rank_slice(std::min(bs, global_rows - first));
    rows += s.hi - s.lo;
  }
  return rows;
}

template <typename T>
void Engine<T>::begin_epoch_locked(const Dataset<T>& data, const std::vector<int32_t>& perm, int batch_size,
                                   int64_t shard_global_rows) {
  if (batch_size <= 0) throw std::invalid_argument("batch_size must be positive");
  const bool sharded = shard_global_rows >= 0;
  if (sharded && !parallel()) throw std::invalid_argument("sharded epochs need a communicator");
  const int64_t total = sharded ? shard_global_rows : data.rows;  // the epoch's rows over all ranks
  if (int64_t(perm.size()) != data.rows) throw std::invalid_argument("permutation length differs from the data");
  if (sharded && data.rows == 0) throw std::invalid_argument("this rank's shard of the training data is empty");
  check_dataset(data, "training data", true);
  for (int32_t i : perm)  // the gather trusts these indices
    if (i < 0 || i >= data.rows) throw std::invalid_argument("permutation holds an index outside the data");
  // Every rank captures its steps afresh at the same step: a rank's captures may have been reset
  // alone (its workspace grew for its share of the validation rows), and NCCL wants the ranks to
  // replay graphs captured alike.
  if (parallel()) backend_->reset_captures();
  epoch_ = EpochProgress{};
  epoch_.generation = ++epochs_begun_;
  epoch_.total_rows = total;
  const int bs = int(std::min<int64_t>(batch_size, std::max<int64_t>(total, 1)));
  if (parallel() && data.streamed)
    throw std::invalid_argument("data-parallel training needs the training data resident, not streamed");
  if (sharded) {
    // This rank's slices of the global batches take its shard's rows in the order perm, from where
    // the last epoch on this shard stopped, going round: a shard smaller than its share repeats
    // rows, the rows of a larger one come first in the next epoch.
    const int64_t ranks = communicator_->size(), rows = shard_rows(total, bs);
    if (shard_cursor_.dataset != data.id) shard_cursor_ = {data.id, 0};
    std::vector<int32_t> local(size_t(rows), 0);
    for (int64_t i = 0; i < rows; ++i) local[size_t(i)] = perm[size_t((shard_cursor_.next + i) % data.rows)];
    ensure_workspace(int((bs + ranks - 1) / ranks));
    upload_order(local.data(), rows);
    shard_cursor_.next = (shard_cursor_.next + rows) % data.rows;
  } else if (parallel()) {
    // This rank's order: its contiguous slice of each global batch, batch after batch.
    const int64_t ranks = communicator_->size();
    std::vector<int32_t> local;
    local.reserve(size_t(data.rows / ranks + bs));
    for (int64_t first = 0; first < data.rows; first += bs) {
      const Slice s = rank_slice(std::min<int64_t>(bs, data.rows - first));
      local.insert(local.end(), perm.begin() + first + s.lo, perm.begin() + first + s.hi);
    }
    ensure_workspace(int((bs + ranks - 1) / ranks));
    upload_order(local.data(), int64_t(local.size()));
  } else {
    ensure_workspace(bs);
  }
  // The device order: the permutation itself (or this rank's part of it), or for streamed data
  // 0, 1, ... over a chunk that the host has already gathered in permutation order (chunks are
  // loaded by train_batches).
  if (data.streamed) {
    epoch_.order = perm;
  } else if (!parallel()) {
    upload_order(perm.data(), data.rows);
  }
  reset_counters(train_counters_, true);
  epoch_.open = true;
  epoch_.dataset = data.id;
  epoch_.batch_size = bs;
}

template <typename T>
EpochResult Engine<T>::train_batches(const Dataset<T>& data, int64_t max_batches) {
  auto held = lock();
  return train_batches_locked(data, max_batches, held);
}

template <typename T>
EpochResult Engine<T>::train_batches_locked(const Dataset<T>& data, int64_t max_batches, Lock& held) {
  if (!epoch_.open) throw std::logic_error("train_batches needs begin_epoch first");
  if (data.id != epoch_.dataset) throw std::invalid_argument("train_batches got other data than begin_epoch");
  if (max_batches < 0) throw std::invalid_argument("max_batches must be >= 0");
  // However the call ends, it leaves the parameters the steps made (Backend::apply_deferred_decay),
  // and one that leaves the epoch open lets the next call go on as if it had not stopped.
  // (A signal handler that raised between two steps ends the call unlocked, after the expose.)
  struct DeferredDecayAtEnd {
    Backend<T>* backend;
    T* params;
    const EpochProgress& epoch;
    const Lock& held;
    bool failed = true;  // until the loop is done
    ~DeferredDecayAtEnd() {
      if (!held.owns_lock()) return;
      if (failed || !epoch.open)
        backend->apply_deferred_decay(params);
      else
        backend->expose_deferred_decay(params);
    }
  } deferred_decay_at_end{backend_.get(), params_.get(), epoch_, held};
  const int bs = epoch_.batch_size;
  const uint64_t generation = epoch_.generation;
  for (int64_t b = 0; b < max_batches && epoch_.rows_done < epoch_.total_rows; ++b) {
    if (b > 0) {
      between_steps(held);
      // Whoever held the lock meanwhile may have ended the epoch, or begun another.
      if (!epoch_.open || epoch_.generation != generation)
        throw std::logic_error("the epoch was ended by another call while it was training");
    }
    // Checked before every step: a call from another thread (or a batch callback) between two
    // steps may have grown the workspace or used the chunk buffers for its own rows.
    const int64_t ranks = parallel() ? communicator_->size() : 1;
    ensure_workspace(int((bs + ranks - 1) / ranks));
    if (data.streamed && (epoch_.chunk_rows == 0 || !stream_.holds_epoch_chunk)) {
      // The epoch's first step, or evaluate / predict used the chunk buffers since the last
      // one: start a new chunk here, at a batch boundary.
      prepare_stream_epoch(data, bs);
      epoch_.loaded_to = epoch_.rows_done;
    }
    const Dataset<T>& source = data.streamed ? stream_.view : data;  // what the steps read
    if (captured_dataset_ != source.id) {  // captured steps point at the old data
      backend_->reset_captures();
      captured_dataset_ = source.id;
    }
    if (data.streamed && epoch_.rows_done == epoch_.loaded_to) {  // next chunk (a multiple of bs)
      const int64_t n = std::min(epoch_.chunk_rows, data.rows - epoch_.loaded_to);
      load_chunk(data, epoch_.order.data(), epoch_.loaded_to, n);
      stream_.holds_epoch_chunk = true;
      set_batch_start(0);
      epoch_.loaded_to += n;
    }
    const int rows = int(std::min<int64_t>(bs, epoch_.total_rows - epoch_.rows_done));
    if (parallel()) {  // this rank's slice of the global batch
      const Slice s = rank_slice(rows);
      const int mine = int(s.hi - s.lo);
      TrainCounters c = read_counters(train_counters_);
      c.row_offset = s.lo;
      c.gradient_rows = rows;
      write_counters(train_counters_, c);
      try {
        // Equal slices come from global batches of different sizes (a last partial batch), and
        // the step bakes both into a capture (the moving averages' share).
        backend_->run_step((int64_t(rows) << 32) | mine, [&] { train_step(mine, source, rows); });
        // Before anything reads the device: a GPU waiting for a dead rank would block it forever.
        communicator_->wait(backend_->native_stream());
      } catch (const DistributedError&) {
        backend_->reset_captures();  // the communicator aborted: no graph may keep its collectives
        throw;
      }
    } else {
      backend_->run_step(rows, [&] { train_step(rows, source); });
    }
    epoch_.rows_done += rows;
    epoch_.batches_done += 1;
  }
  deferred_decay_at_end.failed = false;
  EpochResult result;
  result.steps = epoch_.batches_done;
  result.rows = epoch_.rows_done;
  result.finished = epoch_.rows_done >= epoch_.total_rows;
  if (result.finished) epoch_.open = false;
  if (epoch_.rows_done == 0) return result;
  const TrainCounters c = read_counters(train_counters_);
  result.nonfinite = c.nonfinite != 0;
  double loss_sum = c.loss_sum + c.reg_sum, metric_sum = c.metric_sum;
  result.metric_slots = read_metric_slots(train_counters_);
  if (parallel()) {  // the sums of every rank's slices (the flag is already common to all)
    std::vector<double> sums = {loss_sum, metric_sum};
    sum_over_ranks(sums, result.metric_slots);
    loss_sum = sums[0];
    metric_sum = sums[1];
  }
  result.loss = loss_sum / double(epoch_.rows_done);
  result.metric = metric_sum / double(epoch_.rows_done);
  return result;
}

template <typename T>
EpochResult Engine<T>::train_epoch(const Dataset<T>& data, const std::vector<int32_t>& perm, int batch_size,
                                   int64_t shard_global_rows) {
  auto held = lock();
  begin_epoch_locked(data, perm, batch_size, shard_global_rows);
  return train_batches_locked(data, INT64_MAX, held);
}

template <typename T>
template <typename F>
void Engine<T>::for_each_batch(const Dataset<T>& data, int bs, F&& f) {
  // Streamed data passes through the chunk buffers in order, in chunks of whole batches, so the
  // batches (and so the sums) are exactly those of resident data.
  if (data.streamed) stream_.holds_epoch_chunk = false;  // before anything here can throw
  const int64_t chunk = data.streamed ? prepare_stream(data, bs) : data.rows;
  for (int64_t first = 0; first < data.rows; first += chunk) {
    const int64_t n = std::min(chunk, data.rows - first);
    if (data.streamed) load_chunk(data, nullptr, first, n);
    const T* x = data.streamed ? stream_.view.x : data.x + first * data.x_cols;
    const T* y = data.streamed ? stream_.view.y : (data.y ? data.y + first * data.y_cols : nullptr);
    for (int64_t s = 0; s < n; s += bs) {
      poll_interrupt();
      const int rows = int(std::min<int64_t>(bs, n - s));
      f(rows, x + s * data.x_cols, y ? y + s * data.y_cols : nullptr);
    }
  }
}

template <typename T>
double Engine<T>::regularization_penalty() const {
  if (!any_regularizer_) return 0.0;
  std::vector<T> p(num_params_);
  download_params(p.data());
  double total = 0.0;
  for (const ParamSegment& s : segments_)
    for (int64_t k = s.offset; k < s.offset + s.size; ++k)
      total += double(math::regularization_penalty(p[k], T(s.l1), T(s.l2)));
  return total;
}

template <typename T>
EpochResult Engine<T>::evaluate(const Dataset<T>& data, int batch_size, bool across_ranks) {
  auto held = lock();
  if (batch_size <= 0) throw std::invalid_argument("batch_size must be positive");
  check_dataset(data, "evaluation data", true);
  across_ranks = across_ranks && parallel();
  EpochResult result;
  if (data.rows == 0 && !across_ranks) return result;
  reset_counters(eval_counters_, false);
  if (data.rows > 0) {
    const int bs = int(std::min<int64_t>(batch_size, data.rows));
    ensure_workspace(bs);
    auto* counters = eval_counters_.template as<TrainCounters>();
    for_each_batch(data, bs, [&](int rows, const T* x, const T* y) {
      forward(rows, x, false, counters);
      backend_->loss(rows, n_out(), logits(), y, data.y_cols, data.weighted, spec_.loss, spec_.loss_param,
                     spec_.metric, out_act_, nullptr, counters);
      add_metrics(rows, y, data, eval_counters_);
    });
  }
  const TrainCounters c = read_counters(eval_counters_);
  double loss_sum = c.loss_sum, metric_sum = c.metric_sum, rows = double(data.rows);
  result.nonfinite = c.nonfinite != 0;
  result.metric_slots = read_metric_slots(eval_counters_);
  if (across_ranks) {  // every rank's part of the rows
    std::vector<double> sums = {loss_sum, metric_sum, rows, result.nonfinite ? 1.0 : 0.0};
    sum_over_ranks(sums, result.metric_slots);
    loss_sum = sums[0];
    metric_sum = sums[1];
    rows = sums[2];
    result.nonfinite = sums[3] != 0.0;
    if (rows == 0) return EpochResult{};
  }
  result.loss = loss_sum / rows + regularization_penalty();
  result.metric = metric_sum / rows;
  result.rows = int64_t(rows);
  return result;
}

template <typename T>
void Engine<T>::predict(const Dataset<T>& data, int batch_size, T* out_host) {
  auto held = lock();
  if (batch_size <= 0) throw std::invalid_argument("batch_size must be positive");
  check_dataset(data, "prediction data", false);
  if (data.rows == 0) return;
  const int bs = int(std::min<int64_t>(batch_size, data.rows));
  ensure_workspace(bs);
  const int n = n_out();
  const ActivationSpec act = out_act_;
  auto* counters = eval_counters_.template as<TrainCounters>();
  int64_t start = 0;
  for_each_batch(data, bs, [&](int rows, const T* x, const T*) {
    forward(rows, x, false, counters);
    T* out = out_host + start * n;
    start += rows;
    // The loss's own formula, on the backend, in place: the logits are the workspace of the last
    // op that is not an inference dropout (a model has a Dense), never the input rows.
    if (act.kind != Activation::Linear) backend_->output_activation(rows, n, act, const_cast<T*>(logits()));
    backend_->to_host(out, logits(), sizeof(T) * rows * n);
  });
}

template <typename T>
TrainCounters Engine<T>::gradients_of_whole(const Dataset<T>& given, BackendBuffer<T>& counters, bool with_backward) {
  check_dataset(given, "data", true);
  // One batch must be resident whatever the budget: streamed rows are copied in for this call
  // (OutOfMemory when they really do not fit).
  Dataset<T> whole;
  if (given.streamed) {
    whole.rows = given.rows;
    whole.x_cols = given.x_cols;
    whole.y_cols = given.y_cols;
    whole.weighted = given.weighted;
    whole.class_ids = given.class_ids;
    whole.max_class = given.max_class;
    make_resident(whole, given.host_x, given.host_y);
  }
  const Dataset<T>& data = given.streamed ? whole : given;
  if (data.rows <= 0) throw std::invalid_argument("the batch needs at least one sample");
  if (data.rows > INT32_MAX) throw std::invalid_argument("too many rows for one batch");
  const int rows = int(data.rows);
  ensure_workspace(rows);
  // Counters at the current step: it keys the dropout masks, as in the next training step.
  TrainCounters start;
  const TrainCounters trained = read_counters(train_counters_);
  start.step = trained.step;
  start.mu_product = trained.mu_product;
  write_counters(counters, start);
  zero_metric_slots(counters);
  auto* c = counters.template as<TrainCounters>();
  forward(rows, data.x, true, c);
  backend_->loss(rows, n_out(), logits(), data.y, data.y_cols, data.weighted, spec_.loss, spec_.loss_param, spec_.metric, out_act_,
                 with_backward ? dz_.back().get() : nullptr, c);
  add_metrics(rows, data.y, data, counters);
  if (with_backward) backward(rows, data.x, c);
  return read_counters(counters);
}

template <typename T>
double Engine<T>::compute_gradients(const Dataset<T>& data, T* grads_host) {
  auto held = lock();
  return loss_and_gradients(data, grads_host);
}

template <typename T>
double Engine<T>::loss_and_gradients(const Dataset<T>& data, T* grads_host, double* metric_mean) {
  const TrainCounters c = gradients_of_whole(data, eval_counters_);
  if (metric_mean) *metric_mean = c.metric_sum / double(data.rows);
  backend_->to_host(grads_host, grads_.get(), sizeof(T) * num_params_);
  // Moving statistics are not trained: their slots hold the batch statistics, not gradients.
  for (const ParamSegment& s : segments_)
    if (s.moving_average) std::fill(grads_host + s.offset, grads_host + s.offset + s.size, T(0));
  if (any_regularizer_) {  // add the regularization gradient on the host: not a training path
    std::vector<T> p(num_params_);
    download_params(p.data());
    for (const ParamSegment& s : segments_)
      for (int64_t k = s.offset; k < s.offset + s.size; ++k)
        grads_host[k] += math::regularization_grad(p[k], T(s.l1), T(s.l2));
  }
  return c.loss_sum / double(data.rows) + regularization_penalty();
}

template <typename T>
typename Engine<T>::LbfgsOutcome Engine<T>::lbfgs_step(const Dataset<T>& data, const LbfgsConfig& config) {
  auto finite_nonneg = [](double v) { return std::isfinite(v) && v >= 0.0; };
  if (config.max_iter < 1 || config.max_eval < 1 || config.history_size < 1 || !finite_nonneg(config.lr) ||
      !finite_nonneg(config.tolerance_grad) || !finite_nonneg(config.tolerance_change))
    throw std::invalid_argument("LBFGS: max_iter, max_eval and history_size must be >= 1, lr and the tolerances "
                                "finite numbers >= 0");
  auto held = lock();
  if (epoch_.open) throw std::logic_error("lbfgs_step cannot run while an epoch is in progress");
  std::vector<T> start(num_params_), p(num_params_), g(num_params_);
  download_params(start.data());
  std::vector<double> x(start.begin(), start.end());
  // Committed only when the step succeeds; the history's pairs are shared, not copied.
  LbfgsState state = lbfgs_;
  bool nonfinite = false;
  LbfgsOutcome out;
  int calls = 0;
  auto objective = [&](const std::vector<double>& at, std::vector<double>& grad) {
    for (int64_t k = 0; k < num_params_; ++k) p[k] = T(at[k]);
    backend_->to_backend(params_.get(), p.data(), sizeof(T) * num_params_);
    const double loss = loss_and_gradients(data, g.data(), calls++ == 0 ? &out.metric : nullptr);
    grad.assign(g.begin(), g.end());
    return loss;
  };
  try {
    const LbfgsResult r = fastmlp::lbfgs_step(config, state, x, objective);
    out.loss = r.loss;
    out.evaluations = r.evaluations;
    out.iterations = r.iterations;
    // A probe of the line search may overflow and be bracketed away from, as in torch; what
    // counts is the loss at the start and the point the step ends at.
    nonfinite = !std::isfinite(r.loss) || !std::isfinite(r.final_loss);
    for (double v : x) nonfinite = nonfinite || !std::isfinite(v);
  } catch (...) {
    backend_->to_backend(params_.get(), start.data(), sizeof(T) * num_params_);
    throw;
  }
  if (nonfinite) {  // the weights of the call's start, as a non-finite training step leaves them
    backend_->to_backend(params_.get(), start.data(), sizeof(T) * num_params_);
    out.nonfinite = true;
    return out;
  }
  for (int64_t k = 0; k < num_params_; ++k) p[k] = T(x[k]);
  backend_->to_backend(params_.get(), p.data(), sizeof(T) * num_params_);
  lbfgs_ = std::move(state);
  store_step(read_counters(train_counters_).step + 1);  // one optimizer step, as torch counts step() calls
  return out;
}

template <typename T>
void Engine<T>::reset_lbfgs() {
  auto held = lock();
  lbfgs_ = LbfgsState{};
}

template <typename T>
double Engine<T>::training_loss(const Dataset<T>& data) {
  auto held = lock();
  const TrainCounters c = gradients_of_whole(data, eval_counters_, false);
  return c.loss_sum / double(data.rows) + regularization_penalty();
}

template <typename T>
EpochResult Engine<T>::train_on_batch(const Dataset<T>& data) {
  auto held = lock();
  // It would reset the counters that carry the open epoch's position and sums.
  if (epoch_.open) throw std::logic_error("train_on_batch cannot run while an epoch is in progress");
  const TrainCounters before = gradients_of_whole(data, train_counters_);
  // A step whose update overflows some weights leaves those as they were but applies the rest;
  // a copy in backend memory (no host transfer) lets such a step be undone whole.
  Backend<T>* be = backend_.get();
  const size_t p_bytes = sizeof(T) * num_params_, s_bytes = p_bytes * slots_;
  if (undo_.bytes() < p_bytes + s_bytes) undo_ = BackendBuffer<T>(be, p_bytes + s_bytes);
  be->copy(undo_.get(), params_.get(), p_bytes);
  if (s_bytes) be->copy(undo_.get() + num_params_, state_.get(), s_bytes);
  const int rows = int(data.rows);
  auto* counters = train_counters_.template as<TrainCounters>();
  be->optimizer_step(num_params_, params_.get(), grads_.get(), state_.get(), slots_,
                     segments_dev_.template as<ParamSegment>(), int(segments_.size()), any_regularizer_,
                     config_dev_.template as<OptimizerConfig>(), optimizer_norm_passes(config_),
                     segment_norms_.template as<double>(), counters, rows, nullptr, 0);
  TrainCounters c = read_counters(train_counters_);
  EpochResult r;
  r.steps = 1;
  r.nonfinite = c.nonfinite != 0;
  r.loss = (c.loss_sum + c.reg_sum) / double(rows);
  r.metric = c.metric_sum / double(rows);
  r.metric_slots = read_metric_slots(train_counters_);
  r.rows = rows;
  if (r.nonfinite) {
    be->copy(params_.get(), undo_.get(), p_bytes);
    if (s_bytes) be->copy(state_.get(), undo_.get() + num_params_, s_bytes);
    c.step = before.step;
    c.mu_product = before.mu_product;
    c.nonfinite = 0;
    write_counters(train_counters_, c);
  }
  return r;
}

template class Engine<float>;
template class Engine<double>;

}  // namespace fastmlp
