// pybind11 bindings: the only file of the core that sees Python. The Python package validates
// arguments and converts arrays; these bindings only move data and release the GIL around
// native work.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <vector>

#include "backend_ops.h"
#include "cpu/denormals.h"
#include "fastmlp/backend.h"
#include "fastmlp/engine.h"
#include "fastmlp/initializers.h"
#include "fastmlp/math.h"
#include "fastmlp/mpi_communicator.h"
#include "fastmlp/nccl.h"
#include "fastmlp/random.h"

namespace py = pybind11;
using namespace fastmlp;

namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style | py::array::forcecast>;

// Whether Python's calls flush subnormal floats to zero (fm.set_flush_denormals; cpu/denormals.h
// says why). A setting of the Python API only: a C++ program's calls compute in the mode of its
// own thread, and the pool's workers follow it.
std::atomic<bool> flush_denormals{cpu::kDenormalFlushSupported};
// The calling thread's mode outside fastmlp's calls, for Python code run during one (signals).
thread_local uint32_t python_denormal_mode = 0;

// Every engine call runs with the GIL released. An engine may be busy in another thread (it
// holds its lock for a whole epoch and hands it over only between steps); a thread waiting for
// it while holding the GIL would stall every Python thread, and deadlock with a trainer whose
// Ctrl-C poll takes the GIL. It also runs with subnormals flushed when flush_denormals is set;
// the thread's own mode is back before Python runs again.
template <typename F>
auto without_gil(F&& f) -> decltype(f()) {
  py::gil_scoped_release release;
  python_denormal_mode = cpu::denormal_mode();
  cpu::ScopedDenormalMode mode(flush_denormals.load(std::memory_order_relaxed) ? cpu::kFlushDenormals
                                                                                : python_denormal_mode);
  return f();
}

// An integer argument as int64 in [lo, hi]: a ValueError naming it instead of pybind11's
// "incompatible function arguments" or a silent wrap-around.
// h as a Python int (NumPy integers included, bool refused).
py::object as_index(const py::handle& h, const char* name) {
  if (PyBool_Check(h.ptr())) throw std::invalid_argument(std::string(name) + " must be an integer, got a bool");
  py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(h.ptr()));
  if (!index) {
    PyErr_Clear();
    throw std::invalid_argument(std::string(name) + " must be an integer");
  }
  return index;
}

int64_t checked_int(const py::handle& h, const char* name, int64_t lo, int64_t hi) {
  const py::object index = as_index(h, name);
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (overflow || v < lo || v > hi)
    throw std::invalid_argument(std::string(name) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                                "], got " + py::str(index).cast<std::string>());
  return v;
}

uint64_t checked_seed(const py::handle& h, const char* name) {
  const py::object index = as_index(h, name);
  const unsigned long long v = PyLong_AsUnsignedLongLong(index.ptr());
  if (v == (unsigned long long)-1 && PyErr_Occurred()) {
    PyErr_Clear();
    throw std::invalid_argument(std::string(name) + " must be in [0, 2**64), got " + py::str(index).cast<std::string>());
  }
  return v;
}

// An id of one of types.h's named enums: 0 up to its last kind.
template <typename E>
E checked_enum(const py::handle& h, const char* name) {
  return static_cast<E>(checked_int(h, name, 0, int64_t(enum_count(E{})) - 1));
}

constexpr int64_t kIntMax = INT32_MAX;

// A layer: a dict {"kind": LayerKind id, "units", "activation" (id), "param", "l1", "l2",
// "rate", "seed", "momentum", "epsilon", "center", "scale"} (absent keys keep LayerSpec's
// defaults; unknown keys are an error), or a Dense as the tuple (units, activation, param, l1, l2).
LayerSpec make_layer(const py::handle& h) {
  LayerSpec l;
  if (py::isinstance<py::tuple>(h)) {
    auto t = h.cast<py::tuple>();
    if (t.size() != 5) throw std::invalid_argument("a Dense layer tuple is (units, activation, param, l1, l2)");
    l.units = int(checked_int(t[0], "units", 1, kIntMax));
    l.activation.kind = checked_enum<Activation>(t[1], "activation id");
    l.activation.param = t[2].cast<double>();
    l.l1 = t[3].cast<double>();
    l.l2 = t[4].cast<double>();
    return l;
  }
  if (!py::isinstance<py::dict>(h)) throw std::invalid_argument("a layer is a dict of its settings");
  for (auto item : h.cast<py::dict>()) {
    const std::string key = py::str(item.first);
    const py::handle v = item.second;
    if (key == "kind") l.kind = checked_enum<LayerKind>(v, "layer kind");
    else if (key == "units") l.units = int(checked_int(v, "units", 1, kIntMax));
    else if (key == "activation") l.activation.kind = checked_enum<Activation>(v, "activation id");
    else if (key == "param") l.activation.param = v.cast<double>();
    else if (key == "l1") l.l1 = v.cast<double>();
    else if (key == "l2") l.l2 = v.cast<double>();
    else if (key == "rate") l.dropout.rate = v.cast<double>();
    else if (key == "seed") l.dropout.seed = checked_seed(v, "dropout seed");
    else if (key == "momentum") l.momentum = v.cast<double>();
    else if (key == "epsilon") l.epsilon = v.cast<double>();
    else if (key == "center") l.center = v.cast<bool>();
    else if (key == "scale") l.scale = v.cast<bool>();
    else throw std::invalid_argument("unknown layer setting '" + key + "'");
  }
  return l;
}

ModelSpec make_spec(const py::handle& input_dim, const py::list& layers, const py::handle& loss,
                    const py::handle& metric, double loss_param, const py::list& metrics) {
  ModelSpec s;
  s.input_dim = int(checked_int(input_dim, "input_dim", 1, kIntMax));
  for (const auto& h : layers) s.layers.push_back(make_layer(h));
  s.loss = checked_enum<Loss>(loss, "loss id");
  s.loss_param = loss_param;
  if (py::len(metrics) > size_t(kMaxMetrics))
    throw std::invalid_argument("at most " + std::to_string(kMaxMetrics) + " further metrics");
  for (const auto& h : metrics) {  // (kind id, param, first slot)
    const auto t = h.cast<py::tuple>();
    if (t.size() != 3) throw std::invalid_argument("a metric is (kind id, param, slot)");
    MetricSpec& m = s.metrics.specs[s.metrics.count++];
    m.kind = checked_enum<MetricKind>(t[0], "metric kind");
    m.param = int32_t(checked_int(t[1], "metric param", 0, kIntMax));
    m.slot = int32_t(checked_int(t[2], "metric slot", 0, kMetricSlots));
  }
  s.metric = checked_enum<Metric>(metric, "metric id");
  return s;
}

py::dict epoch_dict(const EpochResult& r) {
  py::dict d;
  d["loss"] = r.loss;
  d["metric"] = r.metric;
  d["nonfinite"] = r.nonfinite;
  d["steps"] = r.steps;
  d["rows"] = r.rows;
  d["finished"] = r.finished;
  if (!r.metric_slots.empty()) d["metric_slots"] = r.metric_slots;
  return d;
}

std::optional<uint64_t> shuffle_seed_of(const py::object& seed) {
  if (seed.is_none()) return std::nullopt;
  return checked_seed(seed, "shuffle seed");
}

std::vector<int32_t> epoch_order(int64_t rows, std::optional<uint64_t> shuffle_seed) {
  return shuffle_seed ? shuffled_indices(rows, *shuffle_seed) : identity_order(rows);
}

// train_epoch's and begin_epoch's arguments, checked: the epoch's order, batch size and (sharded
// data-parallel epochs) rows over all ranks, -1 otherwise.
struct EpochArgs {
  std::vector<int32_t> order;
  int batch_size = 0;
  int64_t total = -1;
};

// Targets must hold rows x target_columns values (class ids: one per row).
template <typename T>
void check_targets_buffer(const Array<T>& y, int64_t rows, int cols) {
  if (y.ndim() < 1 || y.ndim() > 2 || y.shape(0) != rows || y.size() != rows * int64_t(cols))
    throw std::invalid_argument("targets must have " + std::to_string(rows) + " rows of " + std::to_string(cols) +
                                " values");
}

// Ctrl-C: Python runs signal handlers in the main thread only, so only a call made there polls;
// a KeyboardInterrupt raised by a handler ends the native call at a step boundary.
unsigned long g_main_thread = 0;

void poll_python_signals() {
  if (PyThread_get_thread_ident() != g_main_thread) return;
  py::gil_scoped_acquire gil;
  cpu::ScopedDenormalMode mode(python_denormal_mode);  // signal handlers compute as Python does
  if (PyErr_CheckSignals() != 0) throw py::error_already_set();
}

template <typename T>
void bind_engine(py::module_& m, const char* name) {
  using E = Engine<T>;
  using D = Dataset<T>;
  // Datasets are immutable once made: reading them needs no lock.
  py::class_<D, std::shared_ptr<D>>(m, (std::string(name) + "Dataset").c_str())
      .def_property_readonly("rows", [](const D& d) { return d.rows; })
      .def_property_readonly("features", [](const D& d) { return d.x_cols; })
      .def_property_readonly("target_columns", [](const D& d) { return d.y_cols - int(d.weighted); })
      .def_property_readonly("weighted", [](const D& d) { return d.weighted; })
      .def_property_readonly("has_targets", &D::has_targets)
      .def_property_readonly("class_ids", [](const D& d) { return d.class_ids; })
      .def_property_readonly("max_class", [](const D& d) { return d.max_class; })
      .def_property_readonly("device", [](const D& d) { return d.device; })
      .def_property_readonly("streamed", [](const D& d) { return d.streamed; });

  auto batch = [](const py::handle& bs) { return int(checked_int(bs, "batch_size", 1, kIntMax)); };
  auto epoch_args = [batch](const D& d, const py::object& seed, const py::object& bs, const py::object& total) {
    EpochArgs a;
    const auto shuffle = shuffle_seed_of(seed);
    a.batch_size = batch(bs);
    a.total = checked_int(total, "shard_global_rows", -1, INT64_MAX);
    a.order = epoch_order(d.rows, shuffle);
    return a;
  };

  py::class_<E>(m, name)
      .def(py::init([](const py::object& input_dim, const py::list& layers, const py::object& loss,
                       const py::object& metric, const std::string& device, const std::string& precision,
                       double loss_param, const py::list& metrics) {
             ModelSpec spec = make_spec(input_dim, layers, loss, metric, loss_param, metrics);
             auto e = without_gil([&] { return std::make_unique<E>(std::move(spec), device, precision); });
             e->set_interrupt_poll(poll_python_signals);
             return e;
           }),
           py::arg("input_dim"), py::arg("layers"), py::arg("loss"), py::arg("metric"), py::arg("device"),
           py::arg("precision"), py::arg("loss_param") = 0.0, py::arg("metrics") = py::list())
      // Fixed at construction: read without the lock.
      .def_property_readonly("num_params", &E::num_params)
      .def_property_readonly("device", &E::device)
      .def_property_readonly("state_slots", [](const E& e) { return without_gil([&] { return e.state_slots(); }); })
      .def_property(
          "step", [](const E& e) { return without_gil([&] { return e.step(); }); },
          [](E& e, const py::object& step) {
            const int64_t s = checked_int(step, "step", 0, INT64_MAX);
            without_gil([&] { e.set_step(s); });
          })
      .def("get_params",
           [](const E& e) {
             Array<T> out(e.num_params());
             T* p = out.mutable_data();
             without_gil([&] { e.get_params(p); });
             return out;
           })
      .def("set_params",
           [](E& e, Array<T> p) {
             if (p.size() != e.num_params()) throw std::invalid_argument("parameter vector has the wrong length");
             without_gil([&] { e.set_params(p.data()); });
           })
      .def("get_state",
           [](const E& e) {
             std::vector<T> state = without_gil([&] { return e.get_state(); });
             Array<T> out(int64_t(state.size()));
             std::copy(state.begin(), state.end(), out.mutable_data());
             return out;
           })
      .def("set_state",
           [](E& e, Array<T> s) {
             const T* p = s.data();
             const int64_t n = s.size();
             without_gil([&] { e.set_state(p, n); });
           })
      .def("get_snapshot",
           [](const E& e) {
             auto snap = without_gil([&] { return e.snapshot(); });
             Array<T> params(int64_t(snap.params.size())), state(int64_t(snap.state.size()));
             std::copy(snap.params.begin(), snap.params.end(), params.mutable_data());
             std::copy(snap.state.begin(), snap.state.end(), state.mutable_data());
             return py::make_tuple(params, state, snap.step);
           },
           "(parameters, optimizer state, step) read together, consistent while another thread trains")
      .def("set_optimizer",
           [](E& e, const OptimizerConfig& config, bool reset) {
             const OptimizerConfig c = config;
             without_gil([&] { e.set_optimizer(c, reset); });
           },
           py::arg("config"), py::arg("reset") = true)
      .def("set_learning_rate", [](E& e, double lr) { without_gil([&] { e.set_learning_rate(lr); }); })
      .def("initialize",
           [](E& e, const std::vector<std::tuple<std::string, double, double>>& inits, const py::object& seed) {
             std::vector<InitSpec> specs;
             for (const auto& [k, a, b] : inits) specs.push_back({k, a, b});
             const uint64_t s = checked_seed(seed, "seed");
             without_gil([&] {
               const auto p = initial_parameters<T>(e.spec(), specs, s);
               e.set_params(p.data());
             });
           })
      .def("upload",
           [](const E& e, Array<T> x, std::optional<Array<T>> y, bool weighted, bool borrow) {
             if (x.ndim() != 2 || x.shape(1) != e.spec().input_dim)
               throw std::invalid_argument("features must be a 2-D array of " + std::to_string(e.spec().input_dim) +
                                           " columns");
             const int64_t rows = x.shape(0);
             if (weighted && !y) throw std::invalid_argument("weighted data needs targets");
             if (y) check_targets_buffer(*y, rows, target_columns(e.spec()) + int(weighted));
             const T* yp = y ? y->data() : nullptr;
             // Streamed features are read from this array in place: the dataset keeps it alive.
             auto* array = new py::object(x);
             std::shared_ptr<const void> keep(array, [](const void* p) {
               if (!Py_IsInitialized()) return;  // at interpreter exit: nothing left to free into
               py::gil_scoped_acquire gil;
               delete static_cast<const py::object*>(p);
             });
             return without_gil([&] { return e.upload(x.data(), yp, rows, std::move(keep), weighted, borrow); });
           },
           py::arg("x"), py::arg("y") = py::none(), py::arg("weighted") = false, py::arg("borrow") = false,
           "weighted: y's last column is each row's sample weight; borrow: on the CPU read x in place (it "
           "must not change while the dataset lives)")
      .def("borrow",
           [](const E& e, uintptr_t x, int64_t rows, std::optional<Array<T>> y, bool copy, bool weighted) {
             if (e.device() == "cpu") throw std::invalid_argument("the CPU backend cannot use device memory");
             if (rows < 0) throw std::invalid_argument("rows must be >= 0");
             if (weighted && !y) throw std::invalid_argument("weighted data needs targets");
             if (y) check_targets_buffer(*y, rows, target_columns(e.spec()) + int(weighted));
             const T* yp = y ? y->data() : nullptr;
             return without_gil([&] { return e.borrow(reinterpret_cast<const T*>(x), yp, rows, copy, weighted); });
           },
           py::arg("x_ptr"), py::arg("rows"), py::arg("y") = py::none(), py::arg("copy") = false, py::arg("weighted") = false)
      .def("read_device_memory",
           [](const E& e, uintptr_t src, size_t bytes) {
             if (e.device() == "cpu") throw std::invalid_argument("the CPU backend cannot read device memory");
             std::string out(bytes, '\0');
             without_gil([&] { e.read_backend_memory(reinterpret_cast<const void*>(src), bytes, out.data()); });
             return py::bytes(out);
           })
      // shard_global_rows: a sharded data-parallel epoch (Engine::train_epoch), -1 otherwise.
      .def(
          "train_epoch",
          [epoch_args](E& e, const D& d, const py::object& shuffle_seed, const py::object& batch_size,
                       const py::object& shard_global_rows) {
            const EpochArgs a = epoch_args(d, shuffle_seed, batch_size, shard_global_rows);
            return epoch_dict(without_gil([&] { return e.train_epoch(d, a.order, a.batch_size, a.total); }));
          },
          py::arg("data"), py::arg("shuffle_seed"), py::arg("batch_size"), py::arg("shard_global_rows") = -1)
      .def(
          "begin_epoch",
          [epoch_args](E& e, const D& d, const py::object& shuffle_seed, const py::object& batch_size,
                       const py::object& shard_global_rows) {
            const EpochArgs a = epoch_args(d, shuffle_seed, batch_size, shard_global_rows);
            without_gil([&] { e.begin_epoch(d, a.order, a.batch_size, a.total); });
          },
          py::arg("data"), py::arg("shuffle_seed"), py::arg("batch_size"), py::arg("shard_global_rows") = -1)
      .def("train_batches",
           [](E& e, const D& d, const py::object& max_batches) {
             const int64_t n = checked_int(max_batches, "max_batches", 0, INT64_MAX);
             return epoch_dict(without_gil([&] { return e.train_batches(d, n); }));
           })
      .def_property_readonly("epoch_in_progress",
                             [](const E& e) { return without_gil([&] { return e.epoch_in_progress(); }); })
      .def_property_readonly("activation_records_kept",
                             [](const E& e) { return without_gil([&] { return e.activation_records_kept(); }); })
      .def_property_readonly("fused_backward_layers",
                             [](const E& e) { return without_gil([&] { return e.fused_backward_layers(); }); })
      .def_property(
          "data_budget", [](const E& e) { return without_gil([&] { return e.data_budget(); }); },
          [](E& e, std::optional<size_t> bytes) { without_gil([&] { e.set_data_budget(bytes); }); })
      .def("end_epoch", [](E& e) { without_gil([&] { e.end_epoch(); }); })
      .def(
          "evaluate",
          [batch](E& e, const D& d, const py::object& batch_size, bool across_ranks) {
            const int bs = batch(batch_size);
            return epoch_dict(without_gil([&] { return e.evaluate(d, bs, across_ranks); }));
          },
          py::arg("data"), py::arg("batch_size"), py::arg("across_ranks") = false)
      .def("set_communicator",
           [](E& e, std::shared_ptr<Communicator> c) { without_gil([&] { e.set_communicator(std::move(c)); }); })
      .def("predict",
           [batch](E& e, const D& d, const py::object& batch_size) {
             const int bs = batch(batch_size);
             Array<T> out({d.rows, int64_t(output_width(e.spec()))});
             T* p = out.mutable_data();
             without_gil([&] { e.predict(d, bs, p); });
             return out;
           })
      .def("compute_gradients",
           [](E& e, const D& d) {
             Array<T> g(e.num_params());
             T* p = g.mutable_data();
             const double loss = without_gil([&] { return e.compute_gradients(d, p); });
             return py::make_tuple(loss, g);
           })
      .def("training_loss", [](E& e, const D& d) { return without_gil([&] { return e.training_loss(d); }); },
           "mean loss + penalty in training mode, the one compute_gradients differentiates")
      .def("lbfgs_step",
           [](E& e, const D& d, const LbfgsConfig& config) {
             const LbfgsConfig c = config;
             const auto r = without_gil([&] { return e.lbfgs_step(d, c); });
             py::dict out;
             out["loss"] = r.loss;
             out["metric"] = r.metric;
             out["evaluations"] = r.evaluations;
             out["iterations"] = r.iterations;
             out["nonfinite"] = r.nonfinite;
             return out;
           },
           "one torch.optim.LBFGS step over all of the data: {loss (at the start), evaluations, nonfinite}")
      .def("reset_lbfgs", [](E& e) { without_gil([&] { e.reset_lbfgs(); }); })
      .def("hessian_vector_product",
           [](E& e, const D& d, const Array<T>& v) {
             const int64_t n = e.num_params();
             if (!((v.ndim() == 1 && v.shape(0) == n) || (v.ndim() == 2 && v.shape(1) == n)))
               throw std::invalid_argument("v must be a flat array of " + std::to_string(n) +
                                           " values (the model's parameters), or k rows of them");
             const int64_t k = v.ndim() == 1 ? 1 : v.shape(0);
             Array<T> hv(std::vector<py::ssize_t>(v.shape(), v.shape() + v.ndim()));
             const T* vp = v.data();
             T* out = hv.mutable_data();
             const double loss = without_gil([&] { return e.hessian_vector_product(d, k, vp, out); });
             return py::make_tuple(loss, hv);
           },
           "(loss, H v) for the Hessian of mean loss + penalty over the data, exactly (R-operator); v may be "
           "k x num_params (k products from one ordinary pass)")
      .def("train_on_batch",
           [](E& e, const D& d) { return epoch_dict(without_gil([&] { return e.train_on_batch(d); })); });
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastmlp native core: dense networks trained in C++ on CPU or CUDA backends";
  g_main_thread = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const OutOfMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });
  // fastmlp.distributed.DistributedError: a collective timed out or failed.
  py::register_exception<DistributedError>(m, "DistributedError", PyExc_RuntimeError);

  // Data-parallel training's collectives (fastmlp.distributed builds one from mpi4py's handles).
  py::class_<Communicator, std::shared_ptr<Communicator>>(m, "Communicator")
      .def_property_readonly("rank", &Communicator::rank)
      .def_property_readonly("size", &Communicator::size)
      .def_property_readonly("device", &Communicator::device,
                             "Whose memory its gradient sums use: 'cpu' (MPI) or 'cuda:N' (NCCL).")
      .def_property_readonly("stats",
                             [](const Communicator& c) {
                               const Communicator::Stats s = c.stats();
                               py::dict d;
                               d["calls"] = s.calls;
                               d["bytes"] = s.bytes;
                               d["seconds"] = s.seconds;
                               return d;
                             })
      .def("allreduce_sum", [](Communicator& c, py::array_t<double, py::array::c_style> values) {
        if (!values.writeable()) throw std::invalid_argument("allreduce_sum needs a writable float64 array");
        double* p = values.mutable_data();
        const int64_t n = values.size();
        without_gil([&] { c.allreduce_sum(p, n); });
      }, py::arg("values").noconvert(), "Sums a contiguous float64 array over the ranks, in place (collective).");
  m.def("mpi_communicator",
        [](const std::string& library, int handle_bytes, int status_bytes, uint64_t comm, uint64_t float_type,
           uint64_t double_type, uint64_t sum_op, int rank, int size, double timeout_seconds) {
          MpiHandles h;
          h.library = library;
          h.handle_bytes = handle_bytes;
          h.status_bytes = status_bytes;
          h.comm = comm;
          h.float_type = float_type;
          h.double_type = double_type;
          h.sum_op = sum_op;
          h.rank = rank;
          h.size = size;
          h.timeout_seconds = timeout_seconds;
          return make_mpi_communicator(h);
        },
        py::arg("library"), py::arg("handle_bytes"), py::arg("status_bytes"), py::arg("comm"), py::arg("float_type"),
        py::arg("double_type"), py::arg("sum_op"), py::arg("rank"), py::arg("size"), py::arg("timeout_seconds"));

  m.def("nccl_library",
        [](const std::string& library) {
          const NcclLibrary lib = nccl_library(library);
          return py::make_tuple(lib.version, lib.path);
        },
        py::arg("library"), "Opens NCCL (once per process): (version code, the file opened).");
  m.def("nccl_unique_id", [](const std::string& library) { return py::bytes(nccl_unique_id(library)); },
        py::arg("library"), "A new NCCL communicator id (128 bytes) for rank 0 to send to every rank.");
  m.def("nccl_communicator",
        [](const std::string& library, const py::bytes& id, int rank, int size, int device, double timeout_seconds) {
          const std::string bytes = id;
          std::shared_ptr<Communicator> c;
          without_gil([&] { c = make_nccl_communicator(library, bytes, rank, size, device, timeout_seconds); });
          return c;
        },
        py::arg("library"), py::arg("id"), py::arg("rank"), py::arg("size"), py::arg("device"),
        py::arg("timeout_seconds"), "Joins the NCCL communicator `id` on cuda:device (collective).");

  py::class_<Schedule>(m, "Schedule")
      .def(py::init<>())
      .def_property(
          "kind", [](const Schedule& s) { return int(s.kind); },
          [](Schedule& s, const py::object& k) { s.kind = checked_enum<ScheduleKind>(k, "schedule kind"); })
      .def_readwrite("decay_steps", &Schedule::decay_steps)
      .def_readwrite("rate", &Schedule::rate)
      .def_readwrite("min_lr", &Schedule::min_lr)
      .def_readwrite("staircase", &Schedule::staircase)
      .def_readwrite("warmup_steps", &Schedule::warmup_steps);

  py::class_<LbfgsConfig>(m, "LbfgsConfig")
      .def(py::init<>())
      .def_readwrite("lr", &LbfgsConfig::lr)
      .def_readwrite("max_iter", &LbfgsConfig::max_iter)
      .def_readwrite("max_eval", &LbfgsConfig::max_eval)
      .def_readwrite("tolerance_grad", &LbfgsConfig::tolerance_grad)
      .def_readwrite("tolerance_change", &LbfgsConfig::tolerance_change)
      .def_readwrite("history_size", &LbfgsConfig::history_size)
      .def_readwrite("strong_wolfe", &LbfgsConfig::strong_wolfe);
  py::class_<OptimizerConfig>(m, "OptimizerConfig")
      .def(py::init<>())
      .def_property(
          "kind", [](const OptimizerConfig& c) { return int(c.kind); },
          [](OptimizerConfig& c, const py::object& k) { c.kind = checked_enum<OptimizerKind>(k, "optimizer kind"); })
      .def_readwrite("lr", &OptimizerConfig::lr)
      .def_readwrite("momentum", &OptimizerConfig::momentum)
      .def_readwrite("dampening", &OptimizerConfig::dampening)
      .def_readwrite("nesterov", &OptimizerConfig::nesterov)
      .def_readwrite("weight_decay", &OptimizerConfig::weight_decay)
      .def_readwrite("beta1", &OptimizerConfig::beta1)
      .def_readwrite("beta2", &OptimizerConfig::beta2)
      .def_readwrite("eps", &OptimizerConfig::eps)
      .def_readwrite("amsgrad", &OptimizerConfig::amsgrad)
      .def_readwrite("alpha", &OptimizerConfig::alpha)
      .def_readwrite("centered", &OptimizerConfig::centered)
      .def_readwrite("rho", &OptimizerConfig::rho)
      .def_readwrite("lr_decay", &OptimizerConfig::lr_decay)
      .def_readwrite("initial_accumulator_value", &OptimizerConfig::initial_accumulator_value)
      .def_readwrite("momentum_decay", &OptimizerConfig::momentum_decay)
      .def_readwrite("decoupled_weight_decay", &OptimizerConfig::decoupled_weight_decay)
      .def_readwrite("clipvalue", &OptimizerConfig::clipvalue)
      .def_readwrite("clipnorm", &OptimizerConfig::clipnorm)
      .def_readwrite("global_clipnorm", &OptimizerConfig::global_clipnorm)
      .def_readwrite("schedule", &OptimizerConfig::schedule);

  bind_engine<float>(m, "Engine32");
  bind_engine<double>(m, "Engine64");
  bind_backend_ops(m);  // for tests: one backend operation per call

  m.def("set_num_threads", &set_num_threads);
  m.def("get_num_threads", &get_num_threads);
  m.def("set_flush_denormals", [](bool enabled) { flush_denormals = enabled && cpu::kDenormalFlushSupported; });
  m.def("get_flush_denormals", [] { return flush_denormals.load(); });
  m.def("flush_denormals_supported", [] { return cpu::kDenormalFlushSupported; });
  m.def("blas_info", &blas_info);
  m.def("cuda_info", [] {
    const CudaInfo c = cuda_info();
    py::dict d;
    d["available"] = c.available;
    d["device_count"] = c.device_count;
    d["reason"] = c.reason;
    d["description"] = c.description;
    d["build"] = c.build;
    return d;
  });
  m.def("shuffled_indices", [](const py::object& n, const py::object& seed) {
    return shuffled_indices(checked_int(n, "n", 0, kIntMax), checked_seed(seed, "seed"));
  });
  // The ids of every named enum by Python name, from types.h's lists (Python reads them instead of
  // copying them).
  auto kinds = [](const auto& names) {
    py::dict d;
    for (size_t id = 0; id < std::size(names); ++id) d[names[id]] = int(id);
    return d;
  };
  m.attr("ACTIVATION_KINDS") = kinds(kActivationNames);
  m.attr("LOSS_KINDS") = kinds(kLossNames);
  m.attr("METRIC_KINDS") = kinds(kMetricNames);
  m.attr("FURTHER_METRIC_KINDS") = kinds(kMetricKindNames);
  m.attr("OPTIMIZER_KINDS") = kinds(kOptimizerKindNames);
  m.attr("SCHEDULE_KINDS") = kinds(kScheduleKindNames);
  m.attr("LAYER_KINDS") = kinds(kLayerKindNames);
  // The further metrics' sizes (fastmlp/metrics.py plans the slots with them).
  m.attr("AUC_BINS") = kAucBins;
  m.attr("MAX_METRICS") = kMaxMetrics;
  m.attr("MAX_METRIC_SLOTS") = kMetricSlots;
  m.def("metric_slot_count", [](const py::object& kind) {
    return metric_slot_count(checked_enum<MetricKind>(kind, "metric kind"));
  });
  m.def("optimizer_state_slots", static_cast<int (*)(const OptimizerConfig&)>(&optimizer_state_slots),
        "per-parameter state slots the engine keeps for this optimizer config");
  m.def("derive_seed", [](const py::object& seed, const py::object& stream) {
    return derive_seed(checked_seed(seed, "seed"), checked_seed(stream, "stream"));
  });
  m.def("scheduled_lr", [](const Schedule& s, double lr, int64_t t) { return math::scheduled_lr(s, lr, t); });
}
