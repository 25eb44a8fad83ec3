// The CUDA backend: device memory, cuBLASLt GEMMs with fused epilogues, the fused kernels of
// kernels.h, and CUDA-graph capture of whole training steps. Everything runs on one
// non-blocking stream, so the order of the calls is the order of the work.
#include <algorithm>
#include <cstdlib>
#include <string>

#include "check.h"
#include "cuda_backend.h"
#include "gemm.h"
#include "kernels.h"

namespace fastmlp::cuda {

CudaBackend::CudaBackend(int device, const std::string& precision)
    : device_(device), relu_masks_(relu_masks_enabled()) {
  bind();
  FASTMLP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  try {
    gemm_ = std::make_unique<LtGemm>(stream_, precision);
  } catch (...) {
    cudaStreamDestroy(stream_);  // the destructor does not run for a constructor that throws
    throw;
  }
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);  // no throwing here: errors are ignored
  reset_captures();
  gemm_.reset();
  if (stream_) cudaStreamDestroy(stream_);
  cudaGetLastError();
}

// FASTMLP_CUDA_RELU_MASK=0 keeps ReLU's backward in our own kernel (the derivative from the
// activation's output, the bias gradient in the weight-gradient GEMM): an A/B switch for benchmarks.
bool CudaBackend::relu_masks_enabled() {
  const char* v = std::getenv("FASTMLP_CUDA_RELU_MASK");
  return !(v && std::string(v) == "0");
}

void CudaBackend::bind() const { FASTMLP_CUDA_CHECK(cudaSetDevice(device_)); }

std::string CudaBackend::name() const { return "cuda:" + std::to_string(device_); }

void* CudaBackend::allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  bind();
  void* p = nullptr;
  FASTMLP_CUDA_MALLOC(&p, bytes);
  try {  // zero-filled, as the interface promises; synchronous so the memory is ready on return
    FASTMLP_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
    FASTMLP_CUDA_CHECK(cudaStreamSynchronize(stream_));
  } catch (...) {
    cudaFree(p);
    throw;
  }
  return p;
}

void CudaBackend::release(void* p) noexcept {
  if (!p) return;
  cudaSetDevice(device_);
  cudaFree(p);
  cudaGetLastError();  // nothing to report from a noexcept release
}

void CudaBackend::synchronize_device() {
  bind();
  FASTMLP_CUDA_CHECK(cudaDeviceSynchronize());
}

void* CudaBackend::allocate_host(size_t bytes) {
  if (bytes == 0) return nullptr;
  bind();
  void* p = nullptr;
  const cudaError_t err = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw OutOfMemory("cudaHostAlloc could not page-lock " + std::to_string(bytes) + " bytes of host memory: " +
                      cudaGetErrorString(err));
  }
  return p;
}

void CudaBackend::release_host(void* p) noexcept {
  if (!p) return;
  cudaFreeHost(p);
  cudaGetLastError();
}

size_t CudaBackend::memory_for_data() const {
  bind();
  size_t free = 0, total = 0;
  FASTMLP_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  // Kept for the workspace (activations, gradients, cuBLASLt, graphs) that training allocates
  // after the data: a sixteenth of the GPU, or half of what is free when another library's cache
  // holds most of it, but never less than 512 MiB.
  const size_t reserve = std::max(std::min(total / 16, free / 2), size_t(512) << 20);
  return free > reserve ? free - reserve : 0;
}

void CudaBackend::to_backend(void* dst, const void* host_src, size_t bytes) {
  if (!bytes) return;
  bind();
  FASTMLP_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyDefault, stream_));
  FASTMLP_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the host buffer may go away after return
}

void CudaBackend::to_host(void* host_dst, const void* src, size_t bytes) {
  if (!bytes) return;
  bind();
  FASTMLP_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDefault, stream_));
  FASTMLP_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::copy(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  bind();
  FASTMLP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::fill(float* dst, float value, int64_t n) {
  bind();
  launch_fill(dst, value, n, stream_);
}

void CudaBackend::synchronize() {
  bind();
  FASTMLP_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::gather_batch(int rows, int x_cols, int y_cols, const float* x, const float* y, const int32_t* perm,
                               const TrainCounters* counters, float* x_dst, float* y_dst) {
  bind();
  launch_gather_batch(rows, x_cols, y_cols, x, y, perm, counters, x_dst, y_dst, stream_);
}

size_t CudaBackend::activation_record_bytes(int rows, int cols, ActivationSpec act) const {
  return act.kind == Activation::Relu && relu_masks_ ? relu_mask_bytes(rows, cols) : 0;
}

bool CudaBackend::dense_forward(int rows, int in, int out, const float* X, const float* W, const float* b,
                                ActivationSpec act, float* Y, void* record) {
  bind();
  // ReLU and identity fold into the GEMM's epilogue with the bias; the other activations take
  // the bias there and one more element-wise pass. Before a backward pass, ReLU also keeps its
  // mask, so that the backward GEMM applies the derivative and sums the bias gradient itself.
  if (act.kind == Activation::Relu && record &&
      gemm_->matmul(false, false, rows, out, in, X, W, Y, Epilogue::ReluMaskBias, b, nullptr, record))
    return true;
  if (act.kind == Activation::Relu &&
      gemm_->matmul(false, false, rows, out, in, X, W, Y, Epilogue::ReluBias, b))
    return false;
  if (gemm_->matmul(false, false, rows, out, in, X, W, Y, Epilogue::Bias, b)) {
    if (act.kind != Activation::Linear) launch_bias_activation(rows, out, nullptr, act, Y, stream_);
    return false;
  }
  gemm_->matmul(false, false, rows, out, in, X, W, Y);  // no bias epilogue: our kernel adds it
  launch_bias_activation(rows, out, b, act, Y, stream_);
  return false;
}

bool CudaBackend::dense_backward(int rows, int in, int out, const float* X, const void* x_record, const float* W,
                                 const float* dZ, float* dW, float* db, float* dX, ActivationSpec x_act,
                                 float* dX_bias_grad) {
  bind();
  // dW (in x out) = X^T dZ; db = column sums of dZ = of op(B), from the same GEMM when offered.
  if (!db) {
    gemm_->matmul(true, false, in, out, rows, X, dZ, dW);
  } else if (!gemm_->matmul(true, false, in, out, rows, X, dZ, dW, Epilogue::BiasGradB, nullptr, db)) {
    gemm_->matmul(true, false, in, out, rows, X, dZ, dW);
    launch_column_sums(rows, out, dZ, db, stream_);
  }
  if (!dX) return false;
  // dX (rows x in) = dZ W^T, then times the previous activation's derivative: for ReLU with its
  // mask, in the GEMM's epilogue together with dX's column sums (the previous layer's db).
  if (x_act.kind == Activation::Relu && x_record && dX_bias_grad &&
      gemm_->matmul(false, true, rows, in, out, dZ, W, dX, Epilogue::DReluBiasGrad, nullptr, dX_bias_grad, x_record))
    return true;
  gemm_->matmul(false, true, rows, in, out, dZ, W, dX);
  if (x_act.kind != Activation::Linear) launch_activation_backward(int64_t(rows) * in, x_act, X, dX, stream_);
  return false;
}

// The layer ops other than Dense: one launch each on the step's stream (two for layer
// normalization's backward); no host reads, so they capture into the step's graph.
void CudaBackend::activation_forward(int rows, int cols, const float* X, ActivationSpec act, float* Y) {
  bind();
  launch_activation_forward(int64_t(rows) * cols, X, act, Y, stream_);
}

void CudaBackend::output_activation(int rows, int cols, ActivationSpec act, float* Z) {
  bind();
  launch_output_activation(rows, cols, act, Z, stream_);
}

void CudaBackend::activation_backward(int rows, int cols, const float* X, const float* Y, const float* dY,
                                      ActivationSpec act, ActivationSpec x_act, float* dX) {
  bind();
  launch_activation_layer_backward(int64_t(rows) * cols, X, Y, dY, act, x_act, dX, stream_);
}

void CudaBackend::dropout_forward(int rows, int cols, const float* X, DropoutSpec d, const TrainCounters* counters,
                                  float* Y) {
  bind();
  launch_dropout_forward(rows, cols, X, d, counters, Y, stream_);
}

void CudaBackend::dropout_backward(int rows, int cols, const float* X, const float* dY, DropoutSpec d,
                                   const TrainCounters* counters, ActivationSpec x_act, float* dX) {
  bind();
  launch_dropout_backward(rows, cols, X, dY, d, counters, x_act, dX, stream_);
}

void CudaBackend::normalize_forward(NormSpec n, int rows, int cols, const float* X, const float* gamma,
                                    const float* beta, const float* mean_in, const float* var_in, float* Y,
                                    float* xhat, float* inv_std, float* mean_out, float* var_out) {
  bind();
  launch_normalize_forward(n, rows, cols, X, gamma, beta, mean_in, var_in, Y, xhat, inv_std, mean_out, var_out,
                           stream_);
}

void CudaBackend::normalize_backward(NormSpec n, int rows, int cols, const float* X, const float* xhat,
                                     const float* inv_std, const float* gamma, const float* dY, float* dgamma,
                                     float* dbeta, ActivationSpec x_act, float* dX) {
  bind();
  launch_normalize_backward(n, rows, cols, X, xhat, inv_std, gamma, dY, dgamma, dbeta, x_act, dX, stream_);
}

void CudaBackend::loss(int rows, int n_out, const float* Z, const float* Y, int y_cols, bool weighted, Loss loss,
                       double loss_param, Metric metric, ActivationSpec out_act, float* dZ, TrainCounters* counters) {
  bind();
  launch_loss(rows, n_out, Z, Y, y_cols, weighted, loss, loss_param, metric, out_act, dZ, counters, stream_);
}

void CudaBackend::metrics(int rows, int n_out, const float* Z, const float* Y, int y_cols, bool class_ids, Loss loss,
                          ActivationSpec out_act, MetricSet set, double* slots) {
  bind();
  launch_metrics(rows, n_out, Z, Y, y_cols, class_ids, loss, out_act, set, slots, stream_);
}

void CudaBackend::optimizer_step(int64_t n_params, float* params, const float* grads, float* state, int slots,
                                 const ParamSegment* segments, int n_segments, bool any_regularizer,
                                 const OptimizerConfig* config, int norm_passes, double* segment_norms,
                                 TrainCounters* counters, int rows, const KernelGradient<float>* /*kernel_grads*/,
                                 int n_kernel_grads) {
  // forms_kernel_gradients() is false here: every gradient is in grads.
  if (n_kernel_grads != 0) throw std::logic_error("the CUDA backend does not form kernel gradients in the step");
  bind();
  launch_optimizer(n_params, params, grads, state, slots, segments, n_segments, any_regularizer, config,
                   norm_passes, segment_norms, counters, rows, stream_);
}

void CudaBackend::matmul(bool ta, bool tb, int m, int n, int k, const float* A, const float* B, float* C) {
  bind();
  gemm_->matmul(ta, tb, m, n, k, A, B, C);
}

void CudaBackend::axpy(int64_t n, float alpha, const float* X, float* Y) {
  bind();
  launch_axpy(n, alpha, X, Y, stream_);
}

void CudaBackend::activation_second_order(int64_t n, const float* A, const float* G, const float* RG,
                                          const float* RZ, ActivationSpec act, float* RD) {
  bind();
  launch_activation_second_order(n, A, G, RG, RZ, act, RD, stream_);
}

void CudaBackend::loss_hessian_vector(int rows, int n_out, const float* Z, const float* Y, int y_cols, bool weighted,
                                      Loss loss, double loss_param, ActivationSpec out_act, const float* RZ,
                                      float* RDZ) {
  bind();
  launch_loss_hessian_vector(rows, n_out, Z, Y, y_cols, weighted, loss, loss_param, out_act, RZ, RDZ, stream_);
}

// Records the step's work without running it. cuBLASLt plans for new shapes are made during the
// capture: they are host-side queries and launch nothing.
cudaGraphExec_t CudaBackend::capture(const std::function<void()>& ops) {
  cudaGraph_t graph = nullptr;
  FASTMLP_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  try {
    ops();
  } catch (...) {
    cudaStreamEndCapture(stream_, &graph);  // leaves the stream usable for the caller's next call
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    throw;
  }
  FASTMLP_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  check_cuda(err, "cudaGraphInstantiate", __FILE__, __LINE__);
  return exec;
}

void CudaBackend::run_step(int64_t shape, const std::function<void()>& ops) {
  bind();
  auto it = graphs_.find(shape);
  if (it == graphs_.end()) {
    // A shape's first step runs uncaptured, so that what the libraries it calls set up on first
    // use (NCCL connects its ranks at its first collective of a kind) happens outside a capture.
    if (warmed_up_.insert(shape).second) {
      ops();
      return;
    }
    it = graphs_.emplace(shape, capture(ops)).first;
  }
  // The captured kernels read the batch position, step and learning rate from device memory,
  // so one graph serves every later step of this shape.
  FASTMLP_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
}

void CudaBackend::reset_captures() {
  if (graphs_.empty()) return;
  cudaSetDevice(device_);
  cudaStreamSynchronize(stream_);  // no replay may still be running when its graph goes
  for (auto& [shape, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
  cudaGetLastError();
}

}  // namespace fastmlp::cuda
