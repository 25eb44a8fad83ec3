// cuBLASLt is column-major: a row-major C = op(A) op(B) is computed as the column-major
// C^T = op(B)^T op(A)^T, i.e. with the operands swapped and m, n exchanged. Descriptors and the
// heuristic's algorithm are cached per shape, so a steady-state step makes no heuristic query.
#include <stdexcept>

#include "check.h"
#include "gemm.h"

namespace fastmlp::cuda {

LtGemm::LtGemm(cudaStream_t stream, const std::string& precision) : stream_(stream) {
  if (precision == "float32")
    compute_ = CUBLAS_COMPUTE_32F;
  else if (precision == "tf32")
    compute_ = CUBLAS_COMPUTE_32F_FAST_TF32;
  else if (precision == "bf16")
    compute_ = CUBLAS_COMPUTE_32F_FAST_16BF;  // bf16 operands, float32 accumulation
  else
    throw std::invalid_argument("unknown precision '" + precision + "' (float32, tf32 or bf16)");
  FASTMLP_CUBLAS_CHECK(cublasLtCreate(&handle_));
  FASTMLP_CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
}

LtGemm::~LtGemm() {
  for (auto& [key, p] : plans_) {
    if (p.desc) cublasLtMatmulDescDestroy(p.desc);
    if (p.a) cublasLtMatrixLayoutDestroy(p.a);
    if (p.b) cublasLtMatrixLayoutDestroy(p.b);
    if (p.c) cublasLtMatrixLayoutDestroy(p.c);
  }
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

LtGemm::Plan& LtGemm::plan(bool ta, bool tb, int m, int n, int k, Epilogue ep) {
  const Key key{ta, tb, m, n, k, int(ep)};
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  Plan p;
  // Column-major problem: D (n x m) = opB' (n x k) * opA' (k x m), with B' = row-major B buffer.
  const cublasOperation_t op_first = tb ? CUBLAS_OP_T : CUBLAS_OP_N;   // applied to B's buffer
  const cublasOperation_t op_second = ta ? CUBLAS_OP_T : CUBLAS_OP_N;  // applied to A's buffer
  FASTMLP_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, compute_, CUDA_R_32F));
  FASTMLP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof op_first));
  FASTMLP_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof op_second));
  cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
  if (ep == Epilogue::Bias) epi = CUBLASLT_EPILOGUE_BIAS;
  if (ep == Epilogue::ReluBias) epi = CUBLASLT_EPILOGUE_RELU_BIAS;
  if (ep == Epilogue::BiasGradA) epi = CUBLASLT_EPILOGUE_BGRADA;
  FASTMLP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
  // Stored shapes of the buffers in column-major terms: B buffer is (n x k) if !tb else (k x n).
  const int b_rows = tb ? k : n, b_cols = tb ? n : k;  // column-major rows = row-major cols
  const int a_rows = ta ? m : k, a_cols = ta ? k : m;
  FASTMLP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_32F, b_rows, b_cols, b_rows));
  FASTMLP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_32F, a_rows, a_cols, a_rows));
  FASTMLP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, n, m, n));
  cublasLtMatmulPreference_t pref;
  FASTMLP_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  FASTMLP_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                            &workspace_bytes_, sizeof workspace_bytes_));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  p.ok = st == CUBLAS_STATUS_SUCCESS && found > 0;
  if (p.ok) p.algo = result.algo;
  return plans_.emplace(key, p).first->second;
}

bool LtGemm::matmul(bool ta, bool tb, int m, int n, int k, const float* A, const float* B, float* C, Epilogue ep,
                    const float* bias_in, float* bias_grad_out) {
  Plan& p = plan(ta, tb, m, n, k, ep);
  if (!p.ok) {
    if (ep == Epilogue::None) throw std::runtime_error("cuBLASLt found no algorithm for a " + std::to_string(m) + "x" +
                                                       std::to_string(n) + "x" + std::to_string(k) + " GEMM");
    return false;
  }
  if (ep == Epilogue::Bias || ep == Epilogue::ReluBias)
    FASTMLP_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_in, sizeof bias_in));
  if (ep == Epilogue::BiasGradA)
    FASTMLP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_grad_out,
                                                        sizeof bias_grad_out));
  const float one = 1.0f, zero = 0.0f;
  FASTMLP_CUBLAS_CHECK(cublasLtMatmul(handle_, p.desc, &one, B, p.a, A, p.b, &zero, C, p.c, C, p.c, &p.algo,
                                      workspace_, workspace_bytes_, stream_));
  return true;
}

}  // namespace fastmlp::cuda
