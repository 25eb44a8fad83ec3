// The fused loss: one thread per sample computes its loss, metric and logits gradient in one
// pass (math::loss_row); the block reduces loss and metric in double into the counters.
#include "check.h"
#include "fastmlp/math.h"
#include "kernels.h"
#include "reduce.cuh"

namespace fastmlp::cuda {
namespace {

__global__ void loss_kernel(int rows, int n_out, const float* __restrict__ Z, const float* __restrict__ Y, int y_cols,
                            bool weighted, Loss loss, float loss_param, Metric metric, ActivationSpec out_act,
                            float* __restrict__ dZ,
                            TrainCounters* counters) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  double l = 0.0, m = 0.0;
  if (i < rows) {
    const float gradient_rows = float(counters->gradient_rows > 0 ? counters->gradient_rows : rows);
    const float* y = Y + int64_t(i) * y_cols;
    const float w = math::row_weight(y, y_cols, weighted);
    const math::RowResult r = math::loss_row(loss, loss_param, metric, out_act, n_out, Z + int64_t(i) * n_out, y,
                                             w / gradient_rows, dZ ? dZ + int64_t(i) * n_out : nullptr);
    l = double(w) * r.loss;
    m = r.metric;
  }
  l = block_sum(l);
  m = block_sum(m);
  if (threadIdx.x == 0) {
    if (!isfinite(l)) counters->nonfinite = 1;
    atomicAdd(&counters->loss_sum, l);
    atomicAdd(&counters->metric_sum, m);
  }
}

// The further metrics: one thread per row, each contribution an atomic add into its slot (a
// row touches a few scalar slots, or one histogram bin per output for AUC).
struct AtomicAdd {
  double* slots;
  __device__ void operator()(int slot, double v) const {
    if (v != 0.0) atomicAdd(slots + slot, v);
  }
};

__global__ void metrics_kernel(int rows, int n_out, const float* __restrict__ Z, const float* __restrict__ Y,
                               int y_cols, bool class_ids, Loss loss, ActivationSpec out_act, MetricSet set,
                               double* slots) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= rows) return;
  AtomicAdd add{slots};
  for (int k = 0; k < set.count; ++k)
    math::metric_row(set.specs[k], loss, out_act, class_ids, n_out, Z + int64_t(i) * n_out, Y + int64_t(i) * y_cols,
                     add);
}

}  // namespace

void launch_metrics(int rows, int n_out, const float* Z, const float* Y, int y_cols, bool class_ids, Loss loss,
                    ActivationSpec out_act, MetricSet set, double* slots, cudaStream_t s) {
  constexpr int threads = 128;
  metrics_kernel<<<(rows + threads - 1) / threads, threads, 0, s>>>(rows, n_out, Z, Y, y_cols, class_ids, loss, out_act,
                                                                     set, slots);
  FASTMLP_LAUNCH_CHECK("metrics_kernel");
}

void launch_loss(int rows, int n_out, const float* Z, const float* Y, int y_cols, bool weighted, Loss loss,
                 double loss_param, Metric metric, ActivationSpec out_act, float* dZ, TrainCounters* counters,
                 cudaStream_t s) {
  constexpr int threads = 128;
  loss_kernel<<<(rows + threads - 1) / threads, threads, 0, s>>>(rows, n_out, Z, Y, y_cols, weighted, loss,
                                                                  float(loss_param), metric, out_act, dZ, counters);
  FASTMLP_LAUNCH_CHECK("loss_kernel");
}

}  // namespace fastmlp::cuda
