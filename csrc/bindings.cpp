// pybind11 bindings: the only file of the core that sees Python. The Python package validates
// arguments and converts arrays; these bindings only move data and release the GIL around
// native work.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>

#include "fastmlp/backend.h"
#include "fastmlp/engine.h"
#include "fastmlp/initializers.h"
#include "fastmlp/math.h"
#include "fastmlp/random.h"

namespace py = pybind11;
using namespace fastmlp;

namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style | py::array::forcecast>;

ModelSpec make_spec(int input_dim, const std::vector<py::tuple>& layers, int loss, int metric) {
  ModelSpec s;
  s.input_dim = input_dim;
  for (const auto& t : layers) {
    if (t.size() != 5) throw std::invalid_argument("layer tuple must be (units, activation, param, l1, l2)");
    LayerSpec l;
    l.units = t[0].cast<int>();
    l.activation.kind = static_cast<Activation>(t[1].cast<int>());
    l.activation.param = t[2].cast<double>();
    l.l1 = t[3].cast<double>();
    l.l2 = t[4].cast<double>();
    s.layers.push_back(l);
  }
  s.loss = static_cast<Loss>(loss);
  s.metric = static_cast<Metric>(metric);
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
  return d;
}

std::vector<int32_t> epoch_order(int64_t rows, std::optional<uint64_t> shuffle_seed) {
  return shuffle_seed ? shuffled_indices(rows, *shuffle_seed) : identity_order(rows);
}

template <typename T>
void bind_engine(py::module_& m, const char* name) {
  using E = Engine<T>;
  using D = Dataset<T>;
  py::class_<D, std::shared_ptr<D>>(m, (std::string(name) + "Dataset").c_str())
      .def_property_readonly("rows", [](const D& d) { return d.rows; })
      .def_property_readonly("features", [](const D& d) { return d.x_cols; })
      .def_property_readonly("target_columns", [](const D& d) { return d.y_cols; })
      .def_property_readonly("has_targets", &D::has_targets)
      .def_property_readonly("class_ids", [](const D& d) { return d.class_ids; })
      .def_property_readonly("max_class", [](const D& d) { return d.max_class; })
      .def_property_readonly("device", [](const D& d) { return d.device; })
      .def_property_readonly("streamed", [](const D& d) { return d.streamed; });

  py::class_<E>(m, name)
      .def(py::init([](int input_dim, const std::vector<py::tuple>& layers, int loss, int metric,
                       const std::string& device, const std::string& precision) {
             return std::make_unique<E>(make_spec(input_dim, layers, loss, metric), device, precision);
           }),
           py::arg("input_dim"), py::arg("layers"), py::arg("loss"), py::arg("metric"), py::arg("device"),
           py::arg("precision"))
      .def_property_readonly("num_params", &E::num_params)
      .def_property_readonly("device", &E::device)
      .def_property_readonly("state_slots", &E::state_slots)
      .def_property("step", &E::step, &E::set_step)
      .def("get_params",
           [](const E& e) {
             Array<T> out(e.num_params());
             e.get_params(out.mutable_data());
             return out;
           })
      .def("set_params",
           [](E& e, Array<T> p) {
             if (p.size() != e.num_params()) throw std::invalid_argument("parameter vector has the wrong length");
             e.set_params(p.data());
           })
      .def("get_state",
           [](const E& e) {
             Array<T> out(int64_t(e.state_slots()) * e.num_params());
             e.get_state(out.mutable_data());
             return out;
           })
      .def("set_state",
           [](E& e, Array<T> s) {
             if (s.size() != int64_t(e.state_slots()) * e.num_params())
               throw std::invalid_argument("optimizer state has the wrong length");
             e.set_state(s.data());
           })
      .def("set_optimizer", &E::set_optimizer, py::arg("config"), py::arg("reset") = true)
      .def("set_learning_rate", &E::set_learning_rate)
      .def("initialize",
           [](E& e, const std::vector<std::tuple<std::string, double, double>>& inits, uint64_t seed) {
             std::vector<InitSpec> specs;
             for (const auto& [k, a, b] : inits) specs.push_back({k, a, b});
             const auto p = initial_parameters<T>(e.spec(), specs, seed);
             e.set_params(p.data());
           })
      .def("upload",
           [](const E& e, Array<T> x, std::optional<Array<T>> y) {
             const int64_t rows = x.ndim() ? x.shape(0) : 0;
             const T* yp = y ? y->data() : nullptr;
             // Streamed features are read from this array in place: the dataset keeps it alive.
             auto* array = new py::object(x);
             std::shared_ptr<const void> keep(array, [](const void* p) {
               if (!Py_IsInitialized()) return;  // at interpreter exit: nothing left to free into
               py::gil_scoped_acquire gil;
               delete static_cast<const py::object*>(p);
             });
             std::shared_ptr<D> d;
             {
               py::gil_scoped_release release;
               d = e.upload(x.data(), yp, rows, std::move(keep));
             }
             return d;
           },
           py::arg("x"), py::arg("y") = py::none())
      .def("borrow",
           [](const E& e, uintptr_t x, int64_t rows, std::optional<Array<T>> y, bool copy) {
             if (e.device() == "cpu") throw std::invalid_argument("the CPU backend cannot use device memory");
             return e.borrow(reinterpret_cast<const T*>(x), y ? y->data() : nullptr, rows, copy);
           },
           py::arg("x_ptr"), py::arg("rows"), py::arg("y") = py::none(), py::arg("copy") = false)
      .def("read_device_memory",
           [](const E& e, uintptr_t src, size_t bytes) {
             if (e.device() == "cpu") throw std::invalid_argument("the CPU backend cannot read device memory");
             std::string out(bytes, '\0');
             e.read_backend_memory(reinterpret_cast<const void*>(src), bytes, out.data());
             return py::bytes(out);
           })
      .def("train_epoch",
           [](E& e, const D& d, std::optional<uint64_t> shuffle_seed, int batch_size) {
             EpochResult r;
             {
               py::gil_scoped_release release;
               r = e.train_epoch(d, epoch_order(d.rows, shuffle_seed), batch_size);
             }
             return epoch_dict(r);
           })
      .def("begin_epoch",
           [](E& e, const D& d, std::optional<uint64_t> shuffle_seed, int batch_size) {
             py::gil_scoped_release release;
             e.begin_epoch(d, epoch_order(d.rows, shuffle_seed), batch_size);
           })
      .def("train_batches",
           [](E& e, const D& d, int64_t max_batches) {
             EpochResult r;
             {
               py::gil_scoped_release release;
               r = e.train_batches(d, max_batches);
             }
             return epoch_dict(r);
           })
      .def_property_readonly("epoch_in_progress", &E::epoch_in_progress)
      .def_property_readonly("activation_records_kept", &E::activation_records_kept)
      .def_property_readonly("fused_backward_layers", &E::fused_backward_layers)
      .def_property("data_budget", &E::data_budget, &E::set_data_budget)
      .def("end_epoch", &E::end_epoch)
      .def("evaluate",
           [](E& e, const D& d, int batch_size) {
             EpochResult r;
             {
               py::gil_scoped_release release;
               r = e.evaluate(d, batch_size);
             }
             return epoch_dict(r);
           })
      .def("predict",
           [](E& e, const D& d, int batch_size) {
             Array<T> out({d.rows, int64_t(e.spec().layers.back().units)});
             T* p = out.mutable_data();
             {
               py::gil_scoped_release release;
               e.predict(d, batch_size, p);
             }
             return out;
           })
      .def("compute_gradients",
           [](E& e, const D& d) {
             Array<T> g(e.num_params());
             T* p = g.mutable_data();
             double loss;
             {
               py::gil_scoped_release release;
               loss = e.compute_gradients(d, p);
             }
             return py::make_tuple(loss, g);
           })
      .def("train_on_batch", [](E& e, const D& d) {
        EpochResult r;
        {
          py::gil_scoped_release release;
          r = e.train_on_batch(d);
        }
        return epoch_dict(r);
      });
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastmlp native core: dense networks trained in C++ on CPU or CUDA backends";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const OutOfMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });

  py::class_<Schedule>(m, "Schedule")
      .def(py::init<>())
      .def_property(
          "kind", [](const Schedule& s) { return int(s.kind); },
          [](Schedule& s, int k) { s.kind = static_cast<ScheduleKind>(k); })
      .def_readwrite("decay_steps", &Schedule::decay_steps)
      .def_readwrite("rate", &Schedule::rate)
      .def_readwrite("min_lr", &Schedule::min_lr)
      .def_readwrite("staircase", &Schedule::staircase)
      .def_readwrite("warmup_steps", &Schedule::warmup_steps);

  py::class_<OptimizerConfig>(m, "OptimizerConfig")
      .def(py::init<>())
      .def_property(
          "kind", [](const OptimizerConfig& c) { return int(c.kind); },
          [](OptimizerConfig& c, int k) { c.kind = static_cast<OptimizerKind>(k); })
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
      .def_readwrite("schedule", &OptimizerConfig::schedule);

  bind_engine<float>(m, "Engine32");
  bind_engine<double>(m, "Engine64");

  m.def("set_num_threads", &set_num_threads);
  m.def("get_num_threads", &get_num_threads);
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
  m.def("shuffled_indices", [](int64_t n, uint64_t seed) { return shuffled_indices(n, seed); });
  m.def("derive_seed", &derive_seed);
  m.def("scheduled_lr", [](const Schedule& s, double lr, int64_t t) { return math::scheduled_lr(s, lr, t); });
}
