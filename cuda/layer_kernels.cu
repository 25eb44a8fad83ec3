// Element-wise kernels of the Activation and Dropout layers. Outputs may alias inputs: each
// element is read and written by one thread, so no pointer here is __restrict__.
#include "check.h"
#include "fastmlp/math.h"
#include "grid.h"
#include "kernels.h"

namespace fastmlp::cuda {
namespace {

constexpr int kThreads = kElementwiseThreads;
int blocks_for(int64_t n) { return elementwise_blocks(n); }

__global__ void activation_forward_kernel(int64_t n, const float* X, ActivationSpec act, float* Y) {
  const float p = float(act.param);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    Y[i] = math::activate(act.kind, p, X[i]);
}

__global__ void activation_layer_backward_kernel(int64_t n, const float* X, const float* Y, const float* dY,
                                                 ActivationSpec act, ActivationSpec x_act, float* dX) {
  const float p = float(act.param), xp = float(x_act.param);
  const bool chain = x_act.kind != Activation::Linear;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    // X is the activation's input: GELU's and SiLU's derivatives need it (math::activation_grad)
    float g = dY[i] * math::activation_grad(act.kind, p, X[i], Y[i]);
    if (chain) g *= math::activation_grad_from_output(x_act.kind, xp, X[i]);
    dX[i] = g;
  }
}

// The element index of row r, column c is r * cols + c, i.e. i itself, after the rows of the
// global batch before this slice (row_offset, data-parallel training); the step comes from device
// memory so a captured graph draws a fresh mask at every replay, the same as the CPU's.
__global__ void dropout_forward_kernel(int64_t n, int cols, const float* X, DropoutSpec d,
                                       const TrainCounters* counters, float* Y) {
  const int64_t step = counters->step, first = counters->row_offset * cols;
  const float scale = math::dropout_scale<float>(d.rate);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    Y[i] = math::dropout_keep(d.seed, step, first + i, d.rate) ? X[i] * scale : 0.0f;
}

// One thread per row, as the loss kernel: predict's rows are few next to their GEMMs.
__global__ void output_activation_kernel(int rows, int cols, ActivationSpec act, float* Z) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= rows) return;
  float* z = Z + int64_t(i) * cols;
  const float lse = act.kind == Activation::Softmax ? math::row_logsumexp(cols, z) : 0.0f;
  for (int j = 0; j < cols; ++j) z[j] = math::output_value(act, lse, z[j]);
}

__global__ void dropout_backward_kernel(int64_t n, int cols, const float* X, const float* dY, DropoutSpec d,
                                        const TrainCounters* counters, ActivationSpec x_act, float* dX) {
  const int64_t step = counters->step, first = counters->row_offset * cols;
  const float scale = math::dropout_scale<float>(d.rate);
  const float xp = float(x_act.param);
  const bool chain = x_act.kind != Activation::Linear;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float g = math::dropout_keep(d.seed, step, first + i, d.rate) ? dY[i] * scale : 0.0f;
    if (chain) g *= math::activation_grad_from_output(x_act.kind, xp, X[i]);
    dX[i] = g;
  }
}

}  // namespace

void launch_activation_forward(int64_t n, const float* X, ActivationSpec act, float* Y, cudaStream_t s) {
  if (n <= 0) return;
  activation_forward_kernel<<<blocks_for(n), kThreads, 0, s>>>(n, X, act, Y);
  FASTMLP_LAUNCH_CHECK("activation_forward_kernel");
}

void launch_output_activation(int rows, int cols, ActivationSpec act, float* Z, cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  constexpr int threads = 128;
  output_activation_kernel<<<(rows + threads - 1) / threads, threads, 0, s>>>(rows, cols, act, Z);
  FASTMLP_LAUNCH_CHECK("output_activation_kernel");
}

void launch_activation_layer_backward(int64_t n, const float* X, const float* Y, const float* dY, ActivationSpec act,
                                      ActivationSpec x_act, float* dX, cudaStream_t s) {
  if (n <= 0 || !dX) return;
  activation_layer_backward_kernel<<<blocks_for(n), kThreads, 0, s>>>(n, X, Y, dY, act, x_act, dX);
  FASTMLP_LAUNCH_CHECK("activation_layer_backward_kernel");
}

void launch_dropout_forward(int rows, int cols, const float* X, DropoutSpec d, const TrainCounters* counters,
                            float* Y, cudaStream_t s) {
  const int64_t n = int64_t(rows) * cols;
  if (n <= 0) return;
  dropout_forward_kernel<<<blocks_for(n), kThreads, 0, s>>>(n, cols, X, d, counters, Y);
  FASTMLP_LAUNCH_CHECK("dropout_forward_kernel");
}

void launch_dropout_backward(int rows, int cols, const float* X, const float* dY, DropoutSpec d,
                             const TrainCounters* counters, ActivationSpec x_act, float* dX, cudaStream_t s) {
  const int64_t n = int64_t(rows) * cols;
  if (n <= 0 || !dX) return;
  dropout_backward_kernel<<<blocks_for(n), kThreads, 0, s>>>(n, cols, X, dY, d, counters, x_act, dX);
  FASTMLP_LAUNCH_CHECK("dropout_backward_kernel");
}

}  // namespace fastmlp::cuda
