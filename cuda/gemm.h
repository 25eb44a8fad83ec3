// Row-major fp32 GEMMs through cuBLASLt, with the bias / ReLU / ReLU-gradient / bias-gradient
// epilogues folded in.
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
  // ReluBias that also writes the ReLU mask (1 bit per element of C) to aux, for DReluBiasGrad.
  ReluMaskBias,
  // C = (op(A) op(B)) * relu'(z), the mask of z read from aux (written by a ReluMaskBias GEMM with
  // this C's shape), and bias_grad[j] = sum_i C[i][j] (n entries).
  DReluBiasGrad,
};

// Bytes of the ReLU mask of a rows x cols row-major matrix: cuBLASLt stores it column-major over
// the transposed matrix, one bit per element, each of the `rows` columns padded to 128 bits.
size_t relu_mask_bytes(int rows, int cols);

class LtGemm {
 public:
  // precision: "float32", "tf32" or "bf16" (the compute type; operands and results stay fp32).
  LtGemm(cudaStream_t stream, const std::string& precision);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // C = op(A) op(B) plus the epilogue; all matrices row-major and densely packed. bias_in is read
  // by Bias/ReluBias/ReluMaskBias, bias_grad_out written by BiasGradA/B and DReluBiasGrad; the
  // mask (relu_mask_bytes(m, n)) written by ReluMaskBias, read by DReluBiasGrad. Returns false, having done nothing,
  // when cuBLASLt offers no algorithm for this epilogue and shape (the answer is remembered), so
  // the caller runs Default plus its own kernels. Throws when even Default has no algorithm.
  bool matmul(bool ta, bool tb, int m, int n, int k, const float* A, const float* B, float* C,
              Epilogue ep = Epilogue::Default, const float* bias_in = nullptr, float* bias_grad_out = nullptr,
              const void* mask = nullptr);

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool ok = false;  // false: no algorithm for this epilogue, use the fallback
  };
  // transposes, m, n, k, epilogue and the alignments of A, B, C, the bias and the mask (0 when
  // unused): an algorithm picked for 256-byte aligned buffers may not run on a weight matrix or
  // bias that starts mid-allocation.
  using Key = std::tuple<bool, bool, int, int, int, Epilogue, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t>;
  // bias and mask are this call's: the heuristic reads their alignment from the pointers.
  Plan& plan(const Key& key, const void* bias, const void* mask);

  cudaStream_t stream_;
  cublasLtHandle_t handle_ = nullptr;
  cublasComputeType_t compute_ = CUBLAS_COMPUTE_32F;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = size_t(32) << 20;
  std::map<Key, Plan> plans_;
};

}  // namespace fastmlp::cuda
