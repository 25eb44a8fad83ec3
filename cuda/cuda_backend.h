// The CUDA implementation of fastmlp::Backend<float>.
#pragma once
#include <cuda_runtime.h>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "fastmlp/backend.h"

namespace fastmlp::cuda {

class LtGemm;

class CudaBackend final : public Backend<float> {
 public:
  CudaBackend(int device, const std::string& precision);
  ~CudaBackend() override;

  std::string name() const override;
  void* allocate(size_t bytes) override;
  void release(void* p) noexcept override;
  void to_backend(void* dst, const void* host_src, size_t bytes) override;
  void to_host(void* host_dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void fill(float* dst, float value, int64_t n) override;
  void synchronize() override;
  void synchronize_device() override;
  void* allocate_host(size_t bytes) override;
  void release_host(void* p) noexcept override;
  size_t memory_for_data() const override;
  void* native_stream() const override { return stream_; }

  void gather_batch(int rows, int x_cols, int y_cols, const float* x, const float* y, const int32_t* perm,
                    const TrainCounters* counters, float* x_dst, float* y_dst) override;
  size_t activation_record_bytes(int rows, int cols, ActivationSpec act) const override;
  bool dense_forward(int rows, int in, int out, const float* X, const float* W, const float* b, ActivationSpec act,
                     float* Y, void* record) override;
  bool dense_backward(int rows, int in, int out, const float* X, const void* x_record, const float* W,
                      const float* dZ, float* dW, float* db, float* dX, ActivationSpec x_act,
                      float* dX_bias_grad) override;
  void activation_forward(int rows, int cols, const float* X, ActivationSpec act, float* Y) override;
  void output_activation(int rows, int cols, ActivationSpec act, float* Z) override;
  void activation_backward(int rows, int cols, const float* X, const float* Y, const float* dY, ActivationSpec act,
                           ActivationSpec x_act, float* dX) override;
  void dropout_forward(int rows, int cols, const float* X, DropoutSpec d, const TrainCounters* counters,
                       float* Y) override;
  void dropout_backward(int rows, int cols, const float* X, const float* dY, DropoutSpec d,
                        const TrainCounters* counters, ActivationSpec x_act, float* dX) override;
  void normalize_forward(NormSpec n, int rows, int cols, const float* X, const float* gamma, const float* beta,
                         const float* mean_in, const float* var_in, float* Y, float* xhat, float* inv_std,
                         float* mean_out, float* var_out) override;
  void normalize_backward(NormSpec n, int rows, int cols, const float* X, const float* xhat, const float* inv_std,
                          const float* gamma, const float* dY, float* dgamma, float* dbeta, ActivationSpec x_act,
                          float* dX) override;
  void loss(int rows, int n_out, const float* Z, const float* Y, int y_cols, bool weighted, Loss loss,
            double loss_param, Metric metric,
            ActivationSpec out_act, float* dZ, TrainCounters* counters) override;
  void metrics(int rows, int n_out, const float* Z, const float* Y, int y_cols, bool class_ids, Loss loss,
               ActivationSpec out_act, MetricSet set, double* slots) override;
  void optimizer_step(int64_t n_params, float* params, const float* grads, float* state, int slots,
                      const ParamSegment* segments, int n_segments, bool any_regularizer,
                      const OptimizerConfig* config, int norm_passes, double* segment_norms,
                      TrainCounters* counters, int rows, const KernelGradient<float>* kernel_grads,
                      int n_kernel_grads) override;
  void matmul(bool ta, bool tb, int m, int n, int k, const float* A, const float* B, float* C) override;
  void axpy(int64_t n, float alpha, const float* X, float* Y) override;
  void activation_second_order(int64_t n, const float* A, const float* G, const float* RG, const float* RZ,
                               ActivationSpec act, float* RD) override;
  void loss_hessian_vector(int rows, int n_out, const float* Z, const float* Y, int y_cols, bool weighted, Loss loss,
                           double loss_param,
                           ActivationSpec out_act, const float* RZ, float* RDZ) override;
  void run_step(int64_t shape, const std::function<void()>& ops) override;
  void reset_captures() override;

 private:
  void bind() const;  // makes device_ current: calls may come from any thread, after other devices
  static bool relu_masks_enabled();
  cudaGraphExec_t capture(const std::function<void()>& ops);

  int device_;
  bool relu_masks_;  // ReLU keeps cuBLASLt's mask for the fused backward epilogue
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<LtGemm> gemm_;
  std::map<int64_t, cudaGraphExec_t> graphs_;  // captured train step per shape (run_step)
  std::set<int64_t> warmed_up_;                  // shapes whose first step ran uncaptured
};

}  // namespace fastmlp::cuda
