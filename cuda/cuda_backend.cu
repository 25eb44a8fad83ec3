// The CUDA backend: device memory, cuBLASLt GEMMs with fused epilogues, the fused kernels of
// kernels.h, and CUDA-graph capture of whole training steps.
#include <map>
#include <string>

#include "check.h"
#include "cuda_backend.h"
#include "gemm.h"
#include "kernels.h"

namespace fastmlp::cuda {

CudaBackend::CudaBackend(int device, const std::string& precision) : device_(device) {
  FASTMLP_CUDA_CHECK(cudaSetDevice(device));
  FASTMLP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  gemm_ = std::make_unique<LtGemm>(stream_, precision);
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);
  reset_captures();
  gemm_.reset();
  if (stream_) cudaStreamDestroy(stream_);
}

std::string CudaBackend::name() const { return "cuda:" + std::to_string(device_); }

void* CudaBackend::allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear it: the process stays usable
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw OutOfMemory("CUDA out of memory: cudaMalloc of " + std::to_string(bytes >> 20) + " MiB failed with " +
                      std::to_string(free_b >> 20) + " MiB free of " + std::to_string(total_b >> 20) + " MiB on " +
                      name());
  }
  check_cuda(err, "cudaMalloc", __FILE__, __LINE__);
  FASTMLP_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
  FASTMLP_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return p;
}

void CudaBackend::release(void* p) noexcept {
  if (p) cudaFree(p);
}

void CudaBackend::to_backend(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  FASTMLP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_));
  FASTMLP_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the host buffer may go away after return
}

void CudaBackend::to_host(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  FASTMLP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_));
  FASTMLP_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::copy(void* dst, const void* src, size_t bytes) {
  if (bytes) FASTMLP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::fill(float* dst, float value, int64_t n) { launch_fill(dst, value, n, stream_); }

void CudaBackend::synchronize() { FASTMLP_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void CudaBackend::gather_rows(int rows, int cols, const float* src, const int32_t* perm,
                              const TrainCounters* counters, float* dst) {
  launch_gather_rows(rows, cols, src, perm, counters, dst, stream_);
}

void CudaBackend::dense_forward(int rows, int in, int out, const float* X, const float* W, const float* b,
                                ActivationSpec act, float* Y) {
  // ReLU and identity fold into the GEMM epilogue with the bias; the others add the bias there
  // and apply the activation in one more pass.
  if (act.kind == Activation::Relu && gemm_->matmul(false, false, rows, out, in, X, W, Y, Epilogue::ReluBias, b, nullptr))
    return;
  if (gemm_->matmul(false, false, rows, out, in, X, W, Y, Epilogue::Bias, b, nullptr)) {
    if (act.kind != Activation::Linear) launch_bias_activation(rows, out, nullptr, act, Y, stream_);
    return;
  }
  gemm_->matmul(false, false, rows, out, in, X, W, Y, Epilogue::None, nullptr, nullptr);
  launch_bias_activation(rows, out, b, act, Y, stream_);
}

void CudaBackend::dense_backward(int rows, int in, int out, const float* X, const float* W, const float* dZ,
                                 float* dW, float* db, float* dX, ActivationSpec x_act) {
  // dW = X^T dZ, with db = column sums of dZ from the same GEMM's BGRAD epilogue when offered.
  if (!gemm_->matmul(true, false, in, out, rows, X, dZ, dW, Epilogue::BiasGradA, nullptr, db)) {
    gemm_->matmul(true, false, in, out, rows, X, dZ, dW, Epilogue::None, nullptr, nullptr);
    launch_column_sums(rows, out, dZ, db, stream_);
  }
  if (!dX) return;
  gemm_->matmul(false, true, rows, in, out, dZ, W, dX, Epilogue::None, nullptr, nullptr);
  if (x_act.kind != Activation::Linear) launch_activation_backward(int64_t(rows) * in, x_act, X, dX, stream_);
}

void CudaBackend::loss(int rows, int n_out, const float* Z, const float* Y, int y_cols, Loss loss, Metric metric,
                       ActivationSpec out_act, float* dZ, TrainCounters* counters) {
  launch_loss(rows, n_out, Z, Y, y_cols, loss, metric, out_act, dZ, counters, stream_);
}

void CudaBackend::optimizer_step(int64_t n_params, float* params, const float* grads, float* state, int slots,
                                 const ParamSegment* segments, int n_segments, bool any_regularizer,
                                 const OptimizerConfig* config, TrainCounters* counters, int rows) {
  launch_optimizer(n_params, params, grads, state, slots, segments, n_segments, any_regularizer, config, counters,
                   rows, stream_);
}

void CudaBackend::end_step(TrainCounters* counters, int rows) { launch_end_step(counters, rows, stream_); }

void CudaBackend::run_step(int rows, const std::function<void()>& ops) {
  auto it = graphs_.find(rows);
  if (it == graphs_.end()) {
    // First step of this shape: run the ops once eagerly so cuBLASLt plans and heuristics are
    // made outside the capture, then capture the same ops into a graph for the next steps.
    ops();
    cudaGraph_t graph = nullptr;
    FASTMLP_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      ops();
    } catch (...) {
      cudaStreamEndCapture(stream_, &graph);
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();
      throw;
    }
    FASTMLP_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    check_cuda(err, "cudaGraphInstantiate", __FILE__, __LINE__);
    graphs_.emplace(rows, exec);
    return;  // this step already ran eagerly
  }
  FASTMLP_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
}

void CudaBackend::reset_captures() {
  for (auto& [rows, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
}

}  // namespace fastmlp::cuda
