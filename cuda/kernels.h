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
void launch_loss(int rows, int n_out, const float* Z, const float* Y, int y_cols, Loss loss, Metric metric,
                 ActivationSpec out_act, float* dZ, TrainCounters* counters, cudaStream_t s);
void launch_optimizer(int64_t n_params, float* params, const float* grads, float* state, int slots,
                      const ParamSegment* segments, int n_segments, bool any_regularizer,
                      const OptimizerConfig* config, TrainCounters* counters, int rows, cudaStream_t s);

}  // namespace fastmlp::cuda
