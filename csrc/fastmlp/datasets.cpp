// Datasets of an Engine: uploads of host arrays, borrowed device arrays, the checks that a
// dataset fits a model, and streaming of data too large for backend memory through chunk
// buffers of whole batches.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <stdexcept>
#include <string>

#include "cpu/thread_pool.h"
#include "fastmlp/engine.h"
#include "fastmlp/random.h"

namespace fastmlp {
namespace {

std::atomic<uint64_t> next_dataset_id{1};

}  // namespace

namespace {
// Describes host targets y (rows x target_columns, plus a weight column when weighted) for
// `spec`: class ids are checked to be integers in [0, outputs) here, once, so no kernel ever
// indexes outside a row of logits; weights to be finite and >= 0.
template <typename T>
void describe_targets(Dataset<T>& d, const ModelSpec& spec, const T* y_host, bool weighted) {
  d.weighted = y_host && weighted;
  d.y_cols = y_host ? target_columns(spec) + int(d.weighted) : 0;
  d.class_ids = y_host && takes_class_ids(spec.loss);
  if (d.weighted)
    for (int64_t r = 0; r < d.rows; ++r) {
      const T w = y_host[r * d.y_cols + d.y_cols - 1];
      if (!(std::isfinite(double(w)) && w >= T(0)))
        throw std::invalid_argument("sample_weight " + std::to_string(r) + " is " + std::to_string(double(w)) +
                                    ": weights must be finite and >= 0");
    }
  if (!d.class_ids) return;
  const int n_out = output_width(spec);
  for (int64_t r = 0; r < d.rows; ++r) {
    const T c = y_host[r * d.y_cols];
    if (!(c >= T(0) && c < T(n_out)) || c != std::floor(c))
      throw std::invalid_argument("target " + std::to_string(r) + " is " + std::to_string(double(c)) +
                                  ": class ids must be integers in [0, " + std::to_string(n_out) + ")");
    d.max_class = std::max<int64_t>(d.max_class, int64_t(c));
  }
}

// Host targets (if any) copied into new backend memory of the dataset.
template <typename T>
void copy_targets(Backend<T>& backend, Dataset<T>& d, const T* y_host) {
  if (!y_host) return;
  const size_t bytes = sizeof(T) * d.rows * d.y_cols;
  d.y_storage = BackendBuffer<T>(&backend, bytes);
  backend.to_backend(d.y_storage.get(), y_host, bytes);
  d.y = d.y_storage.get();
}

// A dataset of `rows` rows for this model's input width and targets (host y, checked), held by
// the backend whose memory it will use.
template <typename T>
std::shared_ptr<Dataset<T>> new_dataset(const std::shared_ptr<Backend<T>>& backend, const ModelSpec& spec,
                                        int64_t rows, const T* y_host, bool weighted) {
  auto d = std::make_shared<Dataset<T>>();
  d->owner = backend;
  d->device = backend->name();
  d->rows = rows;
  d->x_cols = spec.input_dim;
  describe_targets(*d, spec, y_host, weighted);
  return d;
}
}  // namespace

template <typename T>
void Engine<T>::make_resident(Dataset<T>& d, const T* x, const T* y) const {
  const size_t x_bytes = sizeof(T) * d.rows * d.x_cols, y_bytes = sizeof(T) * d.rows * d.y_cols;
  BackendBuffer<T> xs(backend_.get(), x_bytes), ys(backend_.get(), y ? y_bytes : 0);
  backend_->to_backend(xs.get(), x, x_bytes);
  if (y) backend_->to_backend(ys.get(), y, y_bytes);
  d.x_storage = std::move(xs);
  d.y_storage = std::move(ys);
  d.x = d.x_storage.get();
  d.y = d.y_storage.get();
}

template <typename T>
std::shared_ptr<Dataset<T>> Engine<T>::upload(const T* x, const T* y, int64_t rows,
                                              std::shared_ptr<const void> keep, bool weighted, bool borrow) const {
  auto held = lock();
  auto d = new_dataset(backend_, spec_, rows, y, weighted);
  const size_t bytes = sizeof(T) * rows * (d->x_cols + d->y_cols);
  if (borrow && keep && backend_->host_memory() && bytes <= budget()) {
    d->x = x;
    d->host_owner = std::move(keep);
    copy_targets(*backend_, *d, y);
    d->id = next_dataset_id++;
    return d;
  }
  bool resident = bytes <= budget();
  if (resident) {
    try {
      make_resident(*d, x, y);
    } catch (const OutOfMemory&) {  // e.g. the validation set after the training set: stream it
      resident = false;
    }
  }
  if (!resident) {
    d->streamed = true;
    if (!keep) {  // no promise that the caller's array lives on: stream from our own copy
      auto copy = std::make_shared<std::vector<T>>(x, x + rows * d->x_cols);
      x = copy->data();
      keep = std::move(copy);
    }
    d->host_x = x;
    d->host_owner = std::move(keep);
    if (y) {
      d->host_y_copy.assign(y, y + rows * d->y_cols);
      d->host_y = d->host_y_copy.data();
    }
  }
  d->id = next_dataset_id++;
  return d;
}

template <typename T>
std::shared_ptr<Dataset<T>> Engine<T>::borrow(const T* x_backend, const T* y_host, int64_t rows, bool own_copy,
                                              bool weighted) const {
  auto held = lock();
  auto d = new_dataset(backend_, spec_, rows, y_host, weighted);
  d->x = x_backend;
  // Another library may still be writing the array on its own stream.
  backend_->synchronize_device();
  if (own_copy) {
    const size_t x_bytes = sizeof(T) * rows * d->x_cols;
    try {
      d->x_storage = BackendBuffer<T>(backend_.get(), x_bytes);
    } catch (const OutOfMemory& e) {
      throw OutOfMemory(std::string(e.what()) + " (copying a GPU array for upload; pass the array to fit directly to "
                        "use it in place)");
    }
    backend_->copy(d->x_storage.get(), x_backend, x_bytes);
    backend_->synchronize();  // other engines (other streams) may read it next
    d->x = d->x_storage.get();
  }
  copy_targets(*backend_, *d, y_host);
  d->id = next_dataset_id++;
  return d;
}

template <typename T>
void Engine<T>::check_dataset(const Dataset<T>& data, const char* what, bool needs_targets) const {
  const std::string w = what;
  if (data.device != backend_->name())
    throw std::invalid_argument(w + " lives on " + data.device + " but this model runs on " + backend_->name());
  if (data.x_cols != spec_.input_dim)
    throw std::invalid_argument(w + " has " + std::to_string(data.x_cols) + " features per row but the model's input_dim is " +
                                std::to_string(spec_.input_dim));
  if (!needs_targets) return;  // e.g. predict: whatever targets the data carries are not read
  if (!data.has_targets()) throw std::invalid_argument(w + " has no targets");
  const bool wants_ids = takes_class_ids(spec_.loss);
  if (data.class_ids != wants_ids)
    throw std::invalid_argument(w + (data.class_ids ? " holds one class id per row but this model's loss takes "
                                                    : " holds target rows but this model's loss takes one class id per row") +
                                (data.class_ids ? std::to_string(target_columns(spec_)) + " target values per row" : ""));
  if (data.y_cols - int(data.weighted) != target_columns(spec_))
    throw std::invalid_argument(w + " has " + std::to_string(data.y_cols - int(data.weighted)) +
                                " target columns but the model has " + std::to_string(target_columns(spec_)) +
                                " outputs");
  if (data.class_ids && data.max_class >= n_out())
    throw std::invalid_argument(w + " has class ids up to " + std::to_string(data.max_class) + " but the model has " +
                                std::to_string(n_out()) + " output units");
}

template <typename T>
int64_t Engine<T>::prepare_stream(const Dataset<T>& data, int bs) {
  // Chunks of at most 256 MiB: larger ones save little copy overhead and take GPU memory from others.
  constexpr size_t kMaxChunkBytes = size_t(256) << 20;
  const size_t row_bytes = sizeof(T) * size_t(data.x_cols + data.y_cols);
  const int64_t all_rows = (data.rows + bs - 1) / bs * bs;
  auto wanted = [&] {
    const int64_t fit = int64_t(std::min(budget(), kMaxChunkBytes) / row_bytes) / bs * bs;
    return std::min(std::max<int64_t>(fit, bs), all_rows);  // at least one batch, even over budget
  };
  auto holds = [&](int64_t rows) {
    return stream_.x.bytes() >= sizeof(T) * rows * data.x_cols && stream_.y.bytes() >= sizeof(T) * rows * data.y_cols &&
           stream_.staging.bytes() >= row_bytes * rows;
  };
  int64_t rows = wanted();
  if (!holds(rows)) {
    // Drop the old buffers first (they count as used memory in the budget) and everything that
    // points at them, so an allocation that throws leaves no stale pointer behind.
    backend_->reset_captures();
    captured_dataset_ = 0;
    stream_.holds_epoch_chunk = false;
    stream_.view.x = stream_.view.y = nullptr;
    stream_.view.id = next_dataset_id++;  // captured steps must not point at the old buffers
    stream_.x.reset();
    stream_.y.reset();
    stream_.staging.reset();
    rows = wanted();
    Backend<T>* be = backend_.get();
    BackendBuffer<T> x(be, sizeof(T) * rows * data.x_cols), y(be, sizeof(T) * rows * data.y_cols);
    HostBuffer<T> staging(be, row_bytes * rows);
    stream_.x = std::move(x);
    stream_.y = std::move(y);
    stream_.staging = std::move(staging);
  }
  // A captured step bakes in the target layout: a new layout in the same buffers is a new view.
  if (stream_.view.y_cols != data.y_cols || stream_.view.weighted != data.weighted ||
      stream_.view.class_ids != data.class_ids)
    stream_.view.id = next_dataset_id++;
  stream_.view.x = stream_.x.get();
  stream_.view.y = stream_.y.get();
  stream_.view.x_cols = data.x_cols;
  stream_.view.y_cols = data.y_cols;
  stream_.view.weighted = data.weighted;
  stream_.view.class_ids = data.class_ids;  // the metrics read y as class ids or as target rows
  stream_.view.max_class = data.max_class;
  stream_.view.rows = rows;
  stream_.view.device = backend_->name();
  return rows;
}

template <typename T>
void Engine<T>::prepare_stream_epoch(const Dataset<T>& data, int bs) {
  const int64_t rows = prepare_stream(data, bs);
  upload_order(identity_order(rows).data(), rows);
  epoch_.chunk_rows = rows;  // only once the order covers it
}

template <typename T>
void Engine<T>::load_chunk(const Dataset<T>& data, const int32_t* order, int64_t first, int64_t rows) {
  const int xc = data.x_cols, yc = data.y_cols;
  if (!order) {  // rows in place: straight from the host copy
    backend_->to_backend(stream_.x.get(), data.host_x + first * xc, sizeof(T) * rows * xc);
    if (yc) backend_->to_backend(stream_.y.get(), data.host_y + first * yc, sizeof(T) * rows * yc);
    return;
  }
  T* sx = stream_.staging.get();
  T* sy = sx + rows * xc;
  cpu::parallel_for(rows, rows * (xc + yc) > (1 << 16), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t src = order[first + i];
      std::copy_n(data.host_x + src * xc, xc, sx + i * xc);
      if (yc) std::copy_n(data.host_y + src * yc, yc, sy + i * yc);
    }
  });
  backend_->to_backend(stream_.x.get(), sx, sizeof(T) * rows * xc);
  if (yc) backend_->to_backend(stream_.y.get(), sy, sizeof(T) * rows * yc);
}

// The rest of Engine is instantiated in engine.cpp; these members are defined here.
#define FASTMLP_INSTANTIATE_DATASETS(T)                                                                      \
  template void Engine<T>::make_resident(Dataset<T>&, const T*, const T*) const;                             \
  template std::shared_ptr<Dataset<T>> Engine<T>::upload(const T*, const T*, int64_t,                        \
                                                         std::shared_ptr<const void>, bool, bool) const;      \
  template std::shared_ptr<Dataset<T>> Engine<T>::borrow(const T*, const T*, int64_t, bool, bool) const;    \
  template void Engine<T>::check_dataset(const Dataset<T>&, const char*, bool) const;                        \
  template int64_t Engine<T>::prepare_stream(const Dataset<T>&, int);                                        \
  template void Engine<T>::prepare_stream_epoch(const Dataset<T>&, int);                                     \
  template void Engine<T>::load_chunk(const Dataset<T>&, const int32_t*, int64_t, int64_t);
FASTMLP_INSTANTIATE_DATASETS(float)
FASTMLP_INSTANTIATE_DATASETS(double)

}  // namespace fastmlp
