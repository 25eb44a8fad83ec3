// The element-wise passes of the R-operator (Engine::hessian_vector_product): axpy, the second-
// order chain through an activation, and the loss's Hessian times a direction, one thread per
// sample (math::loss_row_hessian_vector).
#include "check.h"
#include "fastmlp/math.h"
#include "grid.h"
#include "kernels.h"

namespace fastmlp::cuda {
namespace {

__global__ void axpy_kernel(int64_t n, float alpha, const float* __restrict__ X, float* __restrict__ Y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    Y[i] += alpha * X[i];
}

__global__ void activation_second_order_kernel(int64_t n, const float* __restrict__ A, const float* __restrict__ G,
                                               const float* __restrict__ RG, const float* __restrict__ RZ,
                                               ActivationSpec act, float* __restrict__ RD) {
  const float p = float(act.param);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    RD[i] = RG[i] * math::activation_grad_from_output(act.kind, p, A[i]) +
            G[i] * math::activation_second_grad_from_output(act.kind, p, A[i]) * RZ[i];
}

__global__ void loss_hessian_vector_kernel(int rows, int n_out, const float* __restrict__ Z,
                                           const float* __restrict__ Y, int y_cols, bool weighted, Loss loss,
                                           float loss_param, ActivationSpec out_act, const float* __restrict__ RZ,
                                           float* __restrict__ RDZ) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= rows) return;
  const float* y = Y + int64_t(i) * y_cols;
  math::loss_row_hessian_vector(loss, loss_param, out_act, n_out, Z + int64_t(i) * n_out, y, RZ + int64_t(i) * n_out,
                                math::row_weight(y, y_cols, weighted) / float(rows), RDZ + int64_t(i) * n_out);
}

}  // namespace

void launch_axpy(int64_t n, float alpha, const float* X, float* Y, cudaStream_t s) {
  axpy_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0, s>>>(n, alpha, X, Y);
  FASTMLP_LAUNCH_CHECK("axpy_kernel");
}

void launch_activation_second_order(int64_t n, const float* A, const float* G, const float* RG, const float* RZ,
                                    ActivationSpec act, float* RD, cudaStream_t s) {
  activation_second_order_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0, s>>>(n, A, G, RG, RZ, act, RD);
  FASTMLP_LAUNCH_CHECK("activation_second_order_kernel");
}

void launch_loss_hessian_vector(int rows, int n_out, const float* Z, const float* Y, int y_cols, bool weighted,
                                Loss loss, double loss_param, ActivationSpec out_act, const float* RZ, float* RDZ,
                                cudaStream_t s) {
  constexpr int threads = 128;
  loss_hessian_vector_kernel<<<(rows + threads - 1) / threads, threads, 0, s>>>(
      rows, n_out, Z, Y, y_cols, weighted, loss, float(loss_param), out_act, RZ, RDZ);
  FASTMLP_LAUNCH_CHECK("loss_hessian_vector_kernel");
}

}  // namespace fastmlp::cuda
