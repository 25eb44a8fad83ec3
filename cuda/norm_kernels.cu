// Batch normalization (statistics per column, over the rows of the batch) and layer
// normalization (per row, over its features). Sums accumulate in double; the per-element
// formulas are math.h's. Reductions over rows use a 2-D block per tile of 32 columns (a warp
// reads 32 neighbouring floats of a row, kTileRows warps split the rows); reductions over a
// row use one block per row. Y may alias X and dX may alias dY: every element is read and
// written by the same thread, after the block's sums are complete.
#include "check.h"
#include "fastmlp/math.h"
#include "kernels.h"
#include "reduce.cuh"

namespace fastmlp::cuda {
namespace {

constexpr int kTileCols = 32;
constexpr int kTileRows = 16;  // 512 threads per column tile
constexpr int kRowThreads = 256;

// Sum of v over threadIdx.y for this threadIdx.x; every thread gets the same total (each adds
// the partials in the same order), so no broadcast step is needed.
__device__ __forceinline__ double tile_column_total(double v, double (&sh)[kTileRows][kTileCols]) {
  sh[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  double t = 0.0;
  for (int r = 0; r < kTileRows; ++r) t += sh[r][threadIdx.x];
  __syncthreads();  // sh is reused by the next call
  return t;
}

__device__ __forceinline__ float chain_grad(ActivationSpec x_act, const float* X, int64_t i) {
  return x_act.kind == Activation::Linear ? 1.0f
                                          : math::activation_grad_from_output(x_act.kind, float(x_act.param), X[i]);
}

// Training: two passes (mean, then squared deviations) for accuracy, a third writes xhat and Y.
// The mean is rounded to float before the deviations are taken, as the CPU backend does, so
// the two differ only in the order of the sums; one row gives var 0 and xhat 0 exactly.
__global__ void batch_norm_forward_kernel(int rows, int cols, float eps, const float* X, const float* gamma,
                                          const float* beta, float* Y, float* xhat, float* inv_std, float* mean_out,
                                          float* var_out) {
  __shared__ double sh[kTileRows][kTileCols];
  const int j = blockIdx.x * kTileCols + threadIdx.x;
  const bool in = j < cols;  // threads past the last column still join the barriers
  double s = 0.0;
  if (in)
    for (int64_t i = threadIdx.y; i < rows; i += kTileRows) s += X[int64_t(i) * cols + j];
  const float mean = float(tile_column_total(s, sh) / rows);
  double q = 0.0;
  if (in)
    for (int64_t i = threadIdx.y; i < rows; i += kTileRows) {
      const double dev = X[int64_t(i) * cols + j] - mean;
      q += dev * dev;
    }
  const float var = float(tile_column_total(q, sh) / rows);
  if (!in) return;
  const float istd = math::normalize_inv_std(var, eps);
  if (threadIdx.y == 0) {
    if (inv_std) inv_std[j] = istd;
    if (mean_out) mean_out[j] = mean;
    if (var_out) var_out[j] = var;
  }
  const float g = gamma ? gamma[j] : 1.0f, b = beta ? beta[j] : 0.0f;
  for (int64_t i = threadIdx.y; i < rows; i += kTileRows) {
    const int64_t k = int64_t(i) * cols + j;
    const float xh = (X[k] - mean) * istd;
    if (xhat) xhat[k] = xh;
    Y[k] = g * xh + b;
  }
}

// Inference with the moving statistics: element-wise.
__global__ void batch_norm_inference_kernel(int64_t n, int cols, float eps, const float* X, const float* gamma,
                                            const float* beta, const float* mean_in, const float* var_in, float* Y) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n; k += int64_t(gridDim.x) * blockDim.x) {
    const int j = int(k % cols);
    const float xh = (X[k] - mean_in[j]) * math::normalize_inv_std(var_in[j], eps);
    Y[k] = (gamma ? gamma[j] : 1.0f) * xh + (beta ? beta[j] : 0.0f);
  }
}

// One block per row, the same two passes over the row's features.
__global__ void layer_norm_forward_kernel(int cols, float eps, const float* X, const float* gamma, const float* beta,
                                          float* Y, float* xhat, float* inv_std, float* mean_out, float* var_out) {
  __shared__ float mean_sh, var_sh;
  const int64_t row = blockIdx.x;
  const float* x = X + row * cols;
  double s = 0.0;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) s += x[j];
  s = block_sum(s);
  if (threadIdx.x == 0) mean_sh = float(s / cols);
  __syncthreads();
  const float mean = mean_sh;
  double q = 0.0;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) {
    const double dev = x[j] - mean;
    q += dev * dev;
  }
  q = block_sum(q);
  if (threadIdx.x == 0) var_sh = float(q / cols);
  __syncthreads();
  const float var = var_sh;
  const float istd = math::normalize_inv_std(var, eps);
  if (threadIdx.x == 0) {
    if (inv_std) inv_std[row] = istd;
    if (mean_out) mean_out[row] = mean;
    if (var_out) var_out[row] = var;
  }
  for (int j = threadIdx.x; j < cols; j += blockDim.x) {
    const int64_t k = row * cols + j;
    const float xh = (X[k] - mean) * istd;
    if (xhat) xhat[k] = xh;
    Y[k] = (gamma ? gamma[j] : 1.0f) * xh + (beta ? beta[j] : 0.0f);
  }
}

// Per column: dbeta = sum dY, dgamma = sum dY * xhat (both axes' parameters are per column).
// With dX (batch normalization only) the column's input gradient follows from the same sums,
// since dxhat = dY * gamma makes sum dxhat = gamma * dbeta and sum dxhat * xhat = gamma * dgamma.
__global__ void column_norm_backward_kernel(int rows, int cols, const float* X, const float* xhat,
                                            const float* inv_std, const float* gamma, const float* dY, float* dgamma,
                                            float* dbeta, ActivationSpec x_act, float* dX) {
  __shared__ double sh[kTileRows][kTileCols];
  const int j = blockIdx.x * kTileCols + threadIdx.x;
  const bool in = j < cols;
  double sdy = 0.0, sdyx = 0.0;
  if (in)
    for (int64_t i = threadIdx.y; i < rows; i += kTileRows) {
      const int64_t k = int64_t(i) * cols + j;
      const double dy = dY[k];
      sdy += dy;
      sdyx += dy * xhat[k];
    }
  sdy = tile_column_total(sdy, sh);
  sdyx = tile_column_total(sdyx, sh);
  if (!in) return;
  if (threadIdx.y == 0) {
    if (dbeta) dbeta[j] = float(sdy);
    if (dgamma) dgamma[j] = float(sdyx);
  }
  if (!dX) return;
  const float g = gamma ? gamma[j] : 1.0f;
  const float istd = inv_std[j];
  const float sum_dxhat = float(g * sdy), sum_dxhat_xhat = float(g * sdyx);
  for (int64_t i = threadIdx.y; i < rows; i += kTileRows) {
    const int64_t k = int64_t(i) * cols + j;
    dX[k] = math::normalize_input_grad(dY[k] * g, xhat[k], istd, float(rows), sum_dxhat, sum_dxhat_xhat) *
            chain_grad(x_act, X, k);
  }
}

// Layer normalization's input gradient: one block per row, sums over the row's features.
__global__ void layer_norm_input_grad_kernel(int cols, const float* X, const float* xhat, const float* inv_std,
                                             const float* gamma, const float* dY, ActivationSpec x_act, float* dX) {
  __shared__ double sums_sh[2];
  const int64_t row = blockIdx.x;
  double sd = 0.0, sdx = 0.0;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) {
    const int64_t k = row * cols + j;
    const double dxh = double(dY[k]) * (gamma ? gamma[j] : 1.0f);
    sd += dxh;
    sdx += dxh * xhat[k];
  }
  sd = block_sum(sd);
  sdx = block_sum(sdx);
  if (threadIdx.x == 0) {
    sums_sh[0] = sd;
    sums_sh[1] = sdx;
  }
  __syncthreads();
  const float sum_dxhat = float(sums_sh[0]), sum_dxhat_xhat = float(sums_sh[1]);
  const float istd = inv_std[row];
  for (int j = threadIdx.x; j < cols; j += blockDim.x) {
    const int64_t k = row * cols + j;
    const float dxh = dY[k] * (gamma ? gamma[j] : 1.0f);
    dX[k] = math::normalize_input_grad(dxh, xhat[k], istd, float(cols), sum_dxhat, sum_dxhat_xhat) *
            chain_grad(x_act, X, k);
  }
}

// Threads for a block per row: a multiple of 32 (block_sum's shuffles need whole warps), no
// more than the row has features up to kRowThreads.
int row_threads(int cols) {
  const int t = (cols + 31) / 32 * 32;
  return t < kRowThreads ? t : kRowThreads;
}

int column_tiles(int cols) { return (cols + kTileCols - 1) / kTileCols; }

}  // namespace

void launch_normalize_forward(NormSpec n, int rows, int cols, const float* X, const float* gamma, const float* beta,
                              const float* mean_in, const float* var_in, float* Y, float* xhat, float* inv_std,
                              float* mean_out, float* var_out, cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  const float eps = float(n.epsilon);
  if (n.axis == NormAxis::Batch && mean_in && var_in) {
    const int64_t total = int64_t(rows) * cols;
    const int64_t b = (total + kRowThreads - 1) / kRowThreads;
    const int blocks = int(b < 65535 * 8 ? b : 65535 * 8);  // grid-stride loop covers the rest
    batch_norm_inference_kernel<<<blocks, kRowThreads, 0, s>>>(total, cols, eps, X, gamma, beta, mean_in, var_in,
                                                                Y);
    FASTMLP_LAUNCH_CHECK("batch_norm_inference_kernel");
  } else if (n.axis == NormAxis::Batch) {
    batch_norm_forward_kernel<<<column_tiles(cols), dim3(kTileCols, kTileRows), 0, s>>>(
        rows, cols, eps, X, gamma, beta, Y, xhat, inv_std, mean_out, var_out);
    FASTMLP_LAUNCH_CHECK("batch_norm_forward_kernel");
  } else {
    layer_norm_forward_kernel<<<rows, row_threads(cols), 0, s>>>(cols, eps, X, gamma, beta, Y, xhat, inv_std,
                                                                 mean_out, var_out);
    FASTMLP_LAUNCH_CHECK("layer_norm_forward_kernel");
  }
}

void launch_normalize_backward(NormSpec n, int rows, int cols, const float* X, const float* xhat,
                               const float* inv_std, const float* gamma, const float* dY, float* dgamma,
                               float* dbeta, ActivationSpec x_act, float* dX, cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  const dim3 tile(kTileCols, kTileRows);
  if (n.axis == NormAxis::Batch) {
    if (!dgamma && !dbeta && !dX) return;
    column_norm_backward_kernel<<<column_tiles(cols), tile, 0, s>>>(rows, cols, X, xhat, inv_std, gamma, dY, dgamma,
                                                                    dbeta, x_act, dX);
    FASTMLP_LAUNCH_CHECK("column_norm_backward_kernel");
    return;
  }
  // Layer normalization: parameter sums run down the columns, the input gradient along rows.
  if (dgamma || dbeta) {
    column_norm_backward_kernel<<<column_tiles(cols), tile, 0, s>>>(rows, cols, X, xhat, inv_std, gamma, dY, dgamma,
                                                                    dbeta, x_act, nullptr);
    FASTMLP_LAUNCH_CHECK("column_norm_backward_kernel");
  }
  if (dX) {
    layer_norm_input_grad_kernel<<<rows, row_threads(cols), 0, s>>>(cols, X, xhat, inv_std, gamma, dY, x_act, dX);
    FASTMLP_LAUNCH_CHECK("layer_norm_input_grad_kernel");
  }
}

}  // namespace fastmlp::cuda
