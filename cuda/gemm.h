// Row-major fp32 GEMMs through cuBLASLt, with the bias / ReLU / bias-gradient epilogues folded in.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <string>
#include <tuple>

namespace fastmlp::cuda {

// Epilogues in row-major terms, for C (m x n) = op(A) (m x k) * op(B) (k x n):
enum class Epilogue {
  Default,
  Bias,       // C += bias[j] (bias has n entries)
  ReluBias,   // C = max(C + bias[j], 0)
  BiasGradA,  // also bias_grad[i] = sum_k op(A)[i][k] (m entries): cuBLASLt's BGRADB after the swap
  BiasGradB,  // also bias_grad[j] = sum_k op(B)[k][j] (n entries): cuBLASLt's BGRADA after the swap
};

class LtGemm {
 public:
  // precision: "float32", "tf32" or "bf16" (the compute type; operands and results stay fp32).
  LtGemm(cudaStream_t stream, const std::string& precision);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // C = op(A) op(B) plus the epilogue; all matrices row-major and densely packed. bias_in is read
  // by Bias/ReluBias, bias_grad_out written by BiasGradA/B. Returns false, having done nothing,
  // when cuBLASLt offers no algorithm for this epilogue and shape (the answer is remembered), so
  // the caller runs Default plus its own kernels. Throws when even Default has no algorithm.
  bool matmul(bool ta, bool tb, int m, int n, int k, const float* A, const float* B, float* C,
              Epilogue ep = Epilogue::Default, const float* bias_in = nullptr, float* bias_grad_out = nullptr);

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool ok = false;  // false: no algorithm for this epilogue, use the fallback
  };
  // transposes, m, n, k, epilogue and the alignments of A, B and C: an algorithm picked for
  // 256-byte aligned buffers may not run on a weight matrix that starts mid-allocation.
  using Key = std::tuple<bool, bool, int, int, int, Epilogue, uint32_t, uint32_t, uint32_t>;
  Plan& plan(const Key& key);

  cudaStream_t stream_;
  cublasLtHandle_t handle_ = nullptr;
  cublasComputeType_t compute_ = CUBLAS_COMPUTE_32F;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = size_t(32) << 20;
  std::map<Key, Plan> plans_;
};

}  // namespace fastmlp::cuda
