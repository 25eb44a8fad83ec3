// Row-major GEMMs through cuBLASLt with the bias / ReLU / bias-gradient epilogues folded in.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <map>
#include <string>
#include <tuple>

namespace fastmlp::cuda {

enum class Epilogue { None, Bias, ReluBias, BiasGradA };

class LtGemm {
 public:
  LtGemm(cudaStream_t stream, const std::string& precision);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // C (m x n, row-major, ld n) = op(A) op(B) with op(A) m x k and op(B) k x n, row-major.
  // bias: per column of C for Bias/ReluBias (length n); for BiasGradA receives the sums of
  // op(B)'s ... see cuda_backend.cu for the one use. Returns false when cuBLASLt has no
  // algorithm for this epilogue, so the caller can run its own kernels instead.
  bool matmul(bool ta, bool tb, int m, int n, int k, const float* A, const float* B, float* C, Epilogue ep,
              const float* bias_in, float* bias_grad_out);

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool ok = false;
  };
  using Key = std::tuple<bool, bool, int, int, int, int>;
  Plan& plan(bool ta, bool tb, int m, int n, int k, Epilogue ep);

  cudaStream_t stream_;
  cublasLtHandle_t handle_ = nullptr;
  cublasComputeType_t compute_;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 32u << 20;
  std::map<Key, Plan> plans_;
};

}  // namespace fastmlp::cuda
