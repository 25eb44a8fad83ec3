// fastmlp._core.BackendOps32 / BackendOps64: one Backend operation per call, for tests.
//
// The model tests say that a model trained or predicted wrong; these calls say which operation
// did. Each uploads NumPy arrays to the backend's memory, runs one Backend<T> operation (or the
// forward/backward pair that shares a record), and returns its results, so
// tests/test_backend_ops.py checks every operation on every backend the machine has (the CPU,
// and a GPU when there is one) against tests/reference.py on random, odd shapes. Not part of the
// public API: ids are the core's enum ids, shapes are checked, nothing else is validated.
#include "backend_ops.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "fastmlp/backend.h"
#include "fastmlp/engine.h"  // BackendBuffer
#include "fastmlp/types.h"

namespace py = pybind11;

namespace fastmlp {
namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <typename E>
E enum_id(int id, const char* what) {
  if (id < 0 || id >= enum_count(E{})) throw std::invalid_argument(std::string(what) + " id out of range");
  return E(id);
}

template <typename T>
class BackendOps {
 public:
  explicit BackendOps(const std::string& device) : be_(make_backend<T>(device)) {}

  std::string device() const { return be_->name(); }

  // C = op(A) op(B), op transposing when ta / tb.
  Array<T> matmul(bool ta, bool tb, const Array<T>& A, const Array<T>& B) {
    const auto [ar, ac] = shape2(A, "A");
    const auto [br, bc] = shape2(B, "B");
    const int64_t m = ta ? ac : ar, k = ta ? ar : ac, k2 = tb ? bc : br, n = tb ? br : bc;
    if (k != k2) throw std::invalid_argument("matmul: inner dimensions differ");
    auto a = upload(A), b = upload(B);
    auto c = buffer(m * n);
    be_->matmul(ta, tb, int(m), int(n), int(k), a.get(), b.get(), c.get());
    return download(c, {m, n});
  }

  // Layer 1 forward, Y1 = act(X W1 + b1), keeping the activation record the backend asks for;
  // then layer 2's backward from dZ2: dW2 = Y1^T dZ2, db2 = column sums of dZ2 and
  // dZ1 = (dZ2 W2^T) * act'(Y1) (read from the record when one was kept), with db1 = the column
  // sums of dZ1 when the backend formed them in the same call (else None).
  py::dict dense(const Array<T>& X, const Array<T>& W1, const Array<T>& b1, int act, double param,
                 const Array<T>& W2, const Array<T>& dZ2) {
    const auto [rows, in] = shape2(X, "X");
    const auto [w1r, out] = shape2(W1, "W1");
    const auto [w2r, out2] = shape2(W2, "W2");
    const auto [dr, dc] = shape2(dZ2, "dZ2");
    if (w1r != in || b1.size() != out || w2r != out || dr != rows || dc != out2)
      throw std::invalid_argument("dense: shapes do not chain");
    const ActivationSpec a{enum_id<Activation>(act, "activation"), param};
    auto x = upload(X), w1 = upload(W1), bias1 = upload(b1), w2 = upload(W2), dz2 = upload(dZ2);
    auto y1 = buffer(rows * out);
    const size_t record_bytes = be_->activation_record_bytes(int(rows), int(out), a);
    BackendBuffer<T> record(be_.get(), record_bytes);
    const bool kept = be_->dense_forward(int(rows), int(in), int(out), x.get(), w1.get(), bias1.get(), a, y1.get(),
                                         record_bytes ? record.get() : nullptr);
    auto dw2 = zeros(out * out2), db2 = zeros(out2), dz1 = zeros(rows * out), db1 = zeros(out);
    const bool fused = be_->dense_backward(int(rows), int(out), int(out2), y1.get(), kept ? record.get() : nullptr,
                                           w2.get(), dz2.get(), dw2.get(), db2.get(), dz1.get(), a, db1.get());
    py::dict r;
    r["Y1"] = download(y1, {rows, out});
    r["dW2"] = download(dw2, {out, out2});
    r["db2"] = download(db2, {out2});
    r["dZ1"] = download(dz1, {rows, out});
    r["db1"] = fused ? py::object(download(db1, {out})) : py::none();
    r["record_kept"] = kept;
    return r;
  }

  Array<T> activation_forward(const Array<T>& X, int act, double param) {
    const auto [rows, cols] = shape2(X, "X");
    auto x = upload(X), y = buffer(rows * cols);
    be_->activation_forward(int(rows), int(cols), x.get(), {enum_id<Activation>(act, "activation"), param}, y.get());
    return download(y, {rows, cols});
  }

  // dX = dY * act'(X, Y) * x_act'(X).
  Array<T> activation_backward(const Array<T>& X, const Array<T>& Y, const Array<T>& dY, int act, double param,
                               int x_act, double x_param) {
    const auto [rows, cols] = shape2(X, "X");
    same_shape(Y, X, "Y");
    same_shape(dY, X, "dY");
    auto x = upload(X), y = upload(Y), dy = upload(dY), dx = buffer(rows * cols);
    be_->activation_backward(int(rows), int(cols), x.get(), y.get(), dy.get(),
                             {enum_id<Activation>(act, "activation"), param},
                             {enum_id<Activation>(x_act, "activation"), x_param}, dx.get());
    return download(dx, {rows, cols});
  }

  Array<T> output_activation(const Array<T>& Z, int act, double param) {
    const auto [rows, cols] = shape2(Z, "Z");
    auto z = upload(Z);
    be_->output_activation(int(rows), int(cols), {enum_id<Activation>(act, "activation"), param}, z.get());
    return download(z, {rows, cols});
  }

  Array<T> dropout_forward(const Array<T>& X, uint64_t seed, double rate, int64_t step, int64_t row_offset) {
    const auto [rows, cols] = shape2(X, "X");
    auto x = upload(X), y = buffer(rows * cols);
    auto counters = upload_counters(step, row_offset);
    be_->dropout_forward(int(rows), int(cols), x.get(), DropoutSpec{rate, seed}, counters.template as<TrainCounters>(),
                         y.get());
    return download(y, {rows, cols});
  }

  Array<T> dropout_backward(const Array<T>& X, const Array<T>& dY, uint64_t seed, double rate, int64_t step,
                            int64_t row_offset, int x_act, double x_param) {
    const auto [rows, cols] = shape2(X, "X");
    same_shape(dY, X, "dY");
    auto x = upload(X), dy = upload(dY), dx = buffer(rows * cols);
    auto counters = upload_counters(step, row_offset);
    be_->dropout_backward(int(rows), int(cols), x.get(), dy.get(), DropoutSpec{rate, seed},
                          counters.template as<TrainCounters>(), {enum_id<Activation>(x_act, "activation"), x_param},
                          dx.get());
    return download(dx, {rows, cols});
  }

  // Training-mode normalization and its backward pass: Y, xhat, inv_std, mean and var (Batch
  // axis), then dgamma, dbeta and dX from dY. gamma / beta may be None.
  py::dict normalize(int axis, double epsilon, const Array<T>& X, const std::optional<Array<T>>& gamma,
                     const std::optional<Array<T>>& beta, const Array<T>& dY, int x_act, double x_param) {
    const auto [rows, cols] = shape2(X, "X");
    same_shape(dY, X, "dY");
    const NormSpec n{axis == 0 ? NormAxis::Batch : NormAxis::Features, epsilon};
    const int64_t groups = n.axis == NormAxis::Batch ? cols : rows;
    if ((gamma && gamma->size() != cols) || (beta && beta->size() != cols))
      throw std::invalid_argument("normalize: gamma and beta have one value per column");
    auto x = upload(X), dy = upload(dY);
    BackendBuffer<T> g = gamma ? upload(*gamma) : BackendBuffer<T>(), b = beta ? upload(*beta) : BackendBuffer<T>();
    auto y = buffer(rows * cols), xhat = buffer(rows * cols), inv_std = buffer(groups);
    auto mean = buffer(cols), var = buffer(cols);
    const bool stats = n.axis == NormAxis::Batch;
    be_->normalize_forward(n, int(rows), int(cols), x.get(), g.get(), b.get(), nullptr, nullptr, y.get(), xhat.get(),
                           inv_std.get(), stats ? mean.get() : nullptr, stats ? var.get() : nullptr);
    auto dgamma = zeros(cols), dbeta = zeros(cols), dx = buffer(rows * cols);
    be_->normalize_backward(n, int(rows), int(cols), x.get(), xhat.get(), inv_std.get(), g.get(), dy.get(),
                            dgamma.get(), dbeta.get(), {enum_id<Activation>(x_act, "activation"), x_param}, dx.get());
    py::dict r;
    r["Y"] = download(y, {rows, cols});
    r["xhat"] = download(xhat, {rows, cols});
    r["inv_std"] = download(inv_std, {groups});
    r["mean"] = stats ? py::object(download(mean, {cols})) : py::none();
    r["var"] = stats ? py::object(download(var, {cols})) : py::none();
    r["dgamma"] = download(dgamma, {cols});
    r["dbeta"] = download(dbeta, {cols});
    r["dX"] = download(dx, {rows, cols});
    return r;
  }

  // Sums of the rows' losses and of the fused metric, the non-finite flag, and d(mean loss)/dZ
  // (the mean over gradient_rows rows when it is > 0: a data-parallel rank's share).
  py::dict loss(const Array<T>& Z, const Array<T>& Y, bool weighted, int loss_id, double loss_param, int metric,
                int out_act, double out_param, int64_t gradient_rows) {
    const auto [rows, n_out] = shape2(Z, "Z");
    const auto [yr, y_cols] = shape2(Y, "Y");
    if (yr != rows) throw std::invalid_argument("loss: Z and Y have different row counts");
    auto z = upload(Z), y = upload(Y), dz = buffer(rows * n_out);
    auto counters = upload_counters(0, 0, gradient_rows);
    be_->loss(int(rows), int(n_out), z.get(), y.get(), int(y_cols), weighted, enum_id<Loss>(loss_id, "loss"),
              loss_param, enum_id<Metric>(metric, "metric"), {enum_id<Activation>(out_act, "activation"), out_param},
              dz.get(), counters.template as<TrainCounters>());
    const TrainCounters c = download_counters(counters);
    py::dict r;
    r["loss_sum"] = c.loss_sum;
    r["metric_sum"] = c.metric_sum;
    r["nonfinite"] = c.nonfinite != 0;
    r["dZ"] = download(dz, {rows, n_out});
    return r;
  }

  // The slots of metric_row's sums for the metrics [(kind id, param), ...], laid out in order.
  Array<double> metrics(const Array<T>& Z, const Array<T>& Y, bool class_ids, int loss_id, int out_act,
                        double out_param, const std::vector<std::pair<int, int>>& kinds) {
    const auto [rows, n_out] = shape2(Z, "Z");
    const auto [yr, y_cols] = shape2(Y, "Y");
    if (yr != rows) throw std::invalid_argument("metrics: Z and Y have different row counts");
    if (kinds.empty() || kinds.size() > size_t(kMaxMetrics)) throw std::invalid_argument("metrics: 1 to 8 metrics");
    MetricSet set;
    int used = 0;
    for (const auto& [kind, param] : kinds) {
      MetricSpec& s = set.specs[set.count++];
      s.kind = enum_id<MetricKind>(kind, "metric kind");
      s.param = param;
      s.slot = used;
      used += metric_slot_count(s.kind);
    }
    if (used > kMetricSlots) throw std::invalid_argument("metrics: too many slots");
    auto z = upload(Z), y = upload(Y);
    BackendBuffer<T> slots(be_.get(), sizeof(double) * kMetricSlots);
    std::vector<double> zero(kMetricSlots, 0.0);
    be_->to_backend(slots.get(), zero.data(), sizeof(double) * kMetricSlots);
    be_->metrics(int(rows), int(n_out), z.get(), y.get(), int(y_cols), class_ids, enum_id<Loss>(loss_id, "loss"),
                 {enum_id<Activation>(out_act, "activation"), out_param}, set, slots.template as<double>());
    Array<double> out(used);
    be_->synchronize();
    be_->to_host(out.mutable_data(), slots.get(), sizeof(double) * size_t(used));
    return out;
  }

  // One optimizer_step over one segment holding every parameter: the new parameters and state,
  // whether the step overflowed (or was skipped), the penalty sum and the step counter after it.
  py::dict optimizer_step(const Array<T>& params, const Array<T>& grads, const Array<T>& state,
                          const OptimizerConfig& config, double l1, double l2, int64_t step, int rows) {
    const int64_t n = params.size();
    const int slots = optimizer_state_slots(config);
    if (grads.size() != n || state.size() != n * slots)
      throw std::invalid_argument("optimizer_step: grads has one value per parameter, state one per slot and parameter");
    auto p = upload(params), g = upload(grads);
    BackendBuffer<T> st = slots ? upload(state) : BackendBuffer<T>();
    ParamSegment seg;
    seg.size = n;
    seg.l1 = l1;
    seg.l2 = l2;
    BackendBuffer<T> segment(be_.get(), sizeof seg), cfg(be_.get(), sizeof config);
    be_->to_backend(segment.get(), &seg, sizeof seg);
    be_->to_backend(cfg.get(), &config, sizeof config);
    BackendBuffer<T> norms(be_.get(), sizeof(double) * (kSegmentNormSlots + 1));
    auto counters = upload_counters(step, 0);
    be_->optimizer_step(n, p.get(), g.get(), st.get(), slots, segment.template as<ParamSegment>(), 1,
                        l1 != 0.0 || l2 != 0.0, cfg.template as<OptimizerConfig>(), optimizer_norm_passes(config),
                        norms.template as<double>(), counters.template as<TrainCounters>(), rows, nullptr, 0);
    const TrainCounters c = download_counters(counters);
    py::dict r;
    r["params"] = download(p, {n});
    r["state"] = slots ? download(st, {int64_t(slots), n}) : Array<T>(std::vector<py::ssize_t>{0, n});
    r["nonfinite"] = c.nonfinite != 0;
    r["reg_sum"] = c.reg_sum;
    r["step"] = c.step;
    return r;
  }

 private:
  std::unique_ptr<Backend<T>> be_;

  static std::pair<int64_t, int64_t> shape2(const Array<T>& a, const char* name) {
    if (a.ndim() != 2) throw std::invalid_argument(std::string(name) + " must be 2-D");
    return {a.shape(0), a.shape(1)};
  }
  static void same_shape(const Array<T>& a, const Array<T>& like, const char* name) {
    if (a.ndim() != 2 || a.shape(0) != like.shape(0) || a.shape(1) != like.shape(1))
      throw std::invalid_argument(std::string(name) + " must have X's shape");
  }
  BackendBuffer<T> buffer(int64_t n) { return BackendBuffer<T>(be_.get(), sizeof(T) * size_t(n)); }
  BackendBuffer<T> zeros(int64_t n) {
    auto b = buffer(n);
    if (n) be_->fill(b.get(), T(0), n);
    return b;
  }
  BackendBuffer<T> upload(const Array<T>& a) {
    auto b = buffer(a.size());
    if (a.size()) be_->to_backend(b.get(), a.data(), sizeof(T) * size_t(a.size()));
    return b;
  }
  Array<T> download(const BackendBuffer<T>& b, std::vector<py::ssize_t> shape) {
    Array<T> out(shape);
    be_->synchronize();
    if (out.size()) be_->to_host(out.mutable_data(), b.get(), sizeof(T) * size_t(out.size()));
    return out;
  }
  BackendBuffer<T> upload_counters(int64_t step, int64_t row_offset, int64_t gradient_rows = 0) {
    TrainCounters c;
    c.step = step;
    c.row_offset = row_offset;
    c.gradient_rows = gradient_rows;
    BackendBuffer<T> b(be_.get(), sizeof c);
    be_->to_backend(b.get(), &c, sizeof c);
    return b;
  }
  TrainCounters download_counters(const BackendBuffer<T>& b) {
    TrainCounters c;
    be_->synchronize();
    be_->to_host(&c, b.get(), sizeof c);
    return c;
  }
};

template <typename T>
void bind(py::module_& m, const char* name) {
  using O = BackendOps<T>;
  py::class_<O>(m, name)
      .def(py::init<const std::string&>(), py::arg("device"))
      .def_property_readonly("device", &O::device)
      .def("matmul", &O::matmul)
      .def("dense", &O::dense)
      .def("activation_forward", &O::activation_forward)
      .def("activation_backward", &O::activation_backward)
      .def("output_activation", &O::output_activation)
      .def("dropout_forward", &O::dropout_forward)
      .def("dropout_backward", &O::dropout_backward)
      .def("normalize", &O::normalize)
      .def("loss", &O::loss, py::arg("Z"), py::arg("Y"), py::arg("weighted"), py::arg("loss_id"),
           py::arg("loss_param"), py::arg("metric"), py::arg("out_act"), py::arg("out_param"),
           py::arg("gradient_rows") = 0)
      .def("metrics", &O::metrics)
      .def("optimizer_step", &O::optimizer_step);
}

}  // namespace

void bind_backend_ops(py::module_& m) {
  bind<float>(m, "BackendOps32");
  bind<double>(m, "BackendOps64");
}

}  // namespace fastmlp
