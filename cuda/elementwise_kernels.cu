// Element-wise kernels: fill, batch gather, bias + activation, activation backward, column sums.
#include "check.h"
#include "fastmlp/math.h"
#include "grid.h"
#include "kernels.h"

namespace fastmlp::cuda {
namespace {

constexpr int kThreads = kElementwiseThreads;
int blocks_for(int64_t n) { return elementwise_blocks(n); }

__global__ void fill_kernel(float* dst, float value, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = value;
}

// The batch start is read from device memory so a captured graph replays for every batch.
// Each output row holds x_cols features then y_cols targets' worth of work: one launch for both.
__global__ void gather_batch_kernel(int rows, int x_cols, int y_cols, const float* __restrict__ x,
                                    const float* __restrict__ y, const int32_t* __restrict__ perm,
                                    const TrainCounters* counters, float* __restrict__ x_dst,
                                    float* __restrict__ y_dst) {
  const int64_t start = counters->batch_start;
  const int width = x_cols + y_cols;
  const int64_t n = int64_t(rows) * width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / width;
    const int c = int(i - r * width);
    const int64_t src_row = perm[start + r];
    if (c < x_cols)
      x_dst[r * x_cols + c] = x[src_row * x_cols + c];
    else
      y_dst[r * y_cols + (c - x_cols)] = y[src_row * y_cols + (c - x_cols)];
  }
}

__global__ void bias_activation_kernel(int rows, int cols, const float* __restrict__ b, ActivationSpec act,
                                       float* __restrict__ Y) {
  const int64_t n = int64_t(rows) * cols;
  const float p = float(act.param);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float z = b ? Y[i] + b[i % cols] : Y[i];
    Y[i] = math::activate(act.kind, p, z);
  }
}

__global__ void activation_backward_kernel(int64_t n, ActivationSpec act, const float* __restrict__ X,
                                           float* __restrict__ dX) {
  const float p = float(act.param);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dX[i] *= math::activation_grad_from_output(act.kind, p, X[i]);
}

// One thread per column, walking down the rows: neighbouring threads read neighbouring floats.
__global__ void column_sums_kernel(int rows, int cols, const float* __restrict__ M, float* __restrict__ out) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  float acc = 0.0f;
  for (int i = 0; i < rows; ++i) acc += M[int64_t(i) * cols + j];
  out[j] = acc;
}

}  // namespace

void launch_fill(float* dst, float value, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  fill_kernel<<<blocks_for(n), kThreads, 0, s>>>(dst, value, n);
  FASTMLP_LAUNCH_CHECK("fill_kernel");
}

void launch_gather_batch(int rows, int x_cols, int y_cols, const float* x, const float* y, const int32_t* perm,
                         const TrainCounters* counters, float* x_dst, float* y_dst, cudaStream_t s) {
  gather_batch_kernel<<<blocks_for(int64_t(rows) * (x_cols + y_cols)), kThreads, 0, s>>>(
      rows, x_cols, y_cols, x, y, perm, counters, x_dst, y_dst);
  FASTMLP_LAUNCH_CHECK("gather_batch_kernel");
}

void launch_bias_activation(int rows, int cols, const float* b, ActivationSpec act, float* Y, cudaStream_t s) {
  bias_activation_kernel<<<blocks_for(int64_t(rows) * cols), kThreads, 0, s>>>(rows, cols, b, act, Y);
  FASTMLP_LAUNCH_CHECK("bias_activation_kernel");
}

void launch_activation_backward(int64_t n, ActivationSpec act, const float* X, float* dX, cudaStream_t s) {
  activation_backward_kernel<<<blocks_for(n), kThreads, 0, s>>>(n, act, X, dX);
  FASTMLP_LAUNCH_CHECK("activation_backward_kernel");
}

void launch_column_sums(int rows, int cols, const float* M, float* out, cudaStream_t s) {
  column_sums_kernel<<<(cols + 127) / 128, 128, 0, s>>>(rows, cols, M, out);
  FASTMLP_LAUNCH_CHECK("column_sums_kernel");
}

}  // namespace fastmlp::cuda
