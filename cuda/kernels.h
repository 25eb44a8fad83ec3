// Launchers of the CUDA backend's own kernels (one responsibility each; the math is math.h's).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "fastmlp/types.h"

namespace fastmlp::cuda {

void launch_fill(float* dst, float value, int64_t n, cudaStream_t s);
// x_dst/y_dst = rows of x/y picked by perm from counters->batch_start on (one launch for both).
void launch_gather_batch(int rows, int x_cols, int y_cols, const float* x, const float* y, const int32_t* perm,
                         const TrainCounters* counters, float* x_dst, float* y_dst, cudaStream_t s);
// Y = act(Y + b) (b may be null when an epilogue already added it).
void launch_bias_activation(int rows, int cols, const float* b, ActivationSpec act, float* Y, cudaStream_t s);
// dX *= act'(X), the derivative written through the activation's output X.
void launch_activation_backward(int64_t n, ActivationSpec act, const float* X, float* dX, cudaStream_t s);
void launch_column_sums(int rows, int cols, const float* M, float* out, cudaStream_t s);

// Layer ops other than Dense (backend.h has their semantics). layer_kernels.cu:
// Y = act(X), element-wise (n = rows * cols).
void launch_activation_forward(int64_t n, const float* X, ActivationSpec act, float* Y, cudaStream_t s);
// Z = the model's output of logits Z, in place, one row per thread (math::output_value).
void launch_output_activation(int rows, int cols, ActivationSpec act, float* Z, cudaStream_t s);
// dX = dY * act'(Y) * x_act'(X).
void launch_activation_layer_backward(int64_t n, const float* X, const float* Y, const float* dY, ActivationSpec act,
                                      ActivationSpec x_act, float* dX, cudaStream_t s);
// Y = X * keep * scale with the mask of math::dropout_keep at step counters->step (read on the device).
void launch_dropout_forward(int rows, int cols, const float* X, DropoutSpec d, const TrainCounters* counters,
                            float* Y, cudaStream_t s);
// dX = dY * keep * scale * x_act'(X), the same mask.
void launch_dropout_backward(int rows, int cols, const float* X, const float* dY, DropoutSpec d,
                             const TrainCounters* counters, ActivationSpec x_act, float* dX, cudaStream_t s);
// norm_kernels.cu: batch normalization (statistics per column) and layer normalization (per row).
void launch_normalize_forward(NormSpec n, int rows, int cols, const float* X, const float* gamma, const float* beta,
                              const float* mean_in, const float* var_in, float* Y, float* xhat, float* inv_std,
                              float* mean_out, float* var_out, cudaStream_t s);
void launch_normalize_backward(NormSpec n, int rows, int cols, const float* X, const float* xhat,
                               const float* inv_std, const float* gamma, const float* dY, float* dgamma,
                               float* dbeta, ActivationSpec x_act, float* dX, cudaStream_t s);

// curvature_kernels.cu: the R-operator's element-wise passes.
void launch_axpy(int64_t n, float alpha, const float* X, float* Y, cudaStream_t s);
void launch_activation_second_order(int64_t n, const float* A, const float* G, const float* RG, const float* RZ,
                                    ActivationSpec act, float* RD, cudaStream_t s);
void launch_loss_hessian_vector(int rows, int n_out, const float* Z, const float* Y, int y_cols, bool weighted, Loss loss,
                                double loss_param,
                                ActivationSpec out_act, const float* RZ, float* RDZ, cudaStream_t s);

void launch_metrics(int rows, int n_out, const float* Z, const float* Y, int y_cols, bool class_ids, Loss loss,
                    ActivationSpec out_act, MetricSet set, double* slots, cudaStream_t s);
void launch_loss(int rows, int n_out, const float* Z, const float* Y, int y_cols, bool weighted, Loss loss,
                 double loss_param, Metric metric,
                 ActivationSpec out_act, float* dZ, TrainCounters* counters, cudaStream_t s);
void launch_optimizer(int64_t n_params, float* params, const float* grads, float* state, int slots,
                      const ParamSegment* segments, int n_segments, bool any_regularizer,
                      const OptimizerConfig* config, int norm_passes, double* segment_norms,
                      TrainCounters* counters, int rows, cudaStream_t s);

}  // namespace fastmlp::cuda
