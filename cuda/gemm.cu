// cuBLASLt is column-major, and a row-major matrix is its column-major transpose: the row-major
// C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T, i.e. with the operands
// swapped and m, n exchanged. Descriptors, layouts and the heuristic's algorithm are cached per
// shape, so a steady-state step makes no heuristic query (and a captured graph replays none).
#include <stdexcept>

#include "check.h"
#include "gemm.h"

namespace fastmlp::cuda {
namespace {

// Largest power of two (<= 256, cuBLASLt's default assumption) that divides the address.
uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al >>= 1;
  return al;
}

cublasLtEpilogue_t lt_epilogue(Epilogue ep) {
  switch (ep) {
    case Epilogue::Bias: return CUBLASLT_EPILOGUE_BIAS;
    case Epilogue::ReluBias: return CUBLASLT_EPILOGUE_RELU_BIAS;
    case Epilogue::BiasGradA: return CUBLASLT_EPILOGUE_BGRADB;  // row-major A is cuBLASLt's B
    case Epilogue::BiasGradB: return CUBLASLT_EPILOGUE_BGRADA;  // row-major B is cuBLASLt's A
    case Epilogue::ReluMaskBias: return CUBLASLT_EPILOGUE_RELU_AUX_BIAS;
    case Epilogue::DReluBiasGrad: return CUBLASLT_EPILOGUE_DRELU_BGRAD;
    default: return CUBLASLT_EPILOGUE_DEFAULT;
  }
}

bool uses_mask(Epilogue ep) { return ep == Epilogue::ReluMaskBias || ep == Epilogue::DReluBiasGrad; }

// The mask's leading dimension in bits: cuBLASLt's rows (our columns), padded to 128 as it asks.
int64_t relu_mask_ld(int cols) { return (int64_t(cols) + 127) / 128 * 128; }

// Points the epilogue at this call's bias (or bias gradient) and mask. Also done before the
// heuristic query, which infers their alignment from the pointers.
void set_epilogue_pointers(cublasLtMatmulDesc_t desc, Epilogue ep, const void* bias, const void* mask) {
  if (ep != Epilogue::Default)
    FASTMLP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  if (uses_mask(ep))
    FASTMLP_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &mask, sizeof mask));
}

}  // namespace

size_t relu_mask_bytes(int rows, int cols) { return size_t(relu_mask_ld(cols) / 8) * size_t(rows); }

LtGemm::LtGemm(cudaStream_t stream, const std::string& precision) : stream_(stream) {
  if (precision == "float32")
    compute_ = CUBLAS_COMPUTE_32F;
  else if (precision == "tf32")
    compute_ = CUBLAS_COMPUTE_32F_FAST_TF32;
  else if (precision == "bf16")
    compute_ = CUBLAS_COMPUTE_32F_FAST_16BF;  // operands rounded to bf16, fp32 accumulation
  else
    throw std::invalid_argument("unknown precision '" + precision + "' (choose float32, tf32 or bf16)");
  FASTMLP_CUBLAS_CHECK(cublasLtCreate(&handle_));
  try {
    FASTMLP_CUDA_MALLOC(&workspace_, workspace_bytes_);  // once: no allocation inside a step
  } catch (...) {
    cublasLtDestroy(handle_);
    throw;
  }
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

LtGemm::Plan& LtGemm::plan(const Key& key, const void* bias, const void* mask) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  const auto [ta, tb, m, n, k, ep, align_a, align_b, align_c, align_bias, align_mask] = key;
  // Stored in the map at once so the destructor frees whatever was created if a call below throws.
  Plan& p = plans_.emplace(key, Plan{}).first->second;
  // cuBLASLt's A is the row-major B buffer, its B the row-major A buffer.
  const cublasOperation_t op_lt_a = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_lt_b = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasLtEpilogue_t epi = lt_epilogue(ep);
  FASTMLP_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, compute_, CUDA_R_32F));
  FASTMLP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_lt_a, sizeof op_lt_a));
  FASTMLP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_lt_b, sizeof op_lt_b));
  FASTMLP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
  if (uses_mask(ep)) {  // the heuristic checks the mask's leading dimension, so it is set first
    const int64_t ld = relu_mask_ld(n);
    FASTMLP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof ld));
  }
  set_epilogue_pointers(p.desc, ep, bias, mask);
  // Column-major shapes of the stored buffers (a row-major r x c buffer is column-major c x r).
  const int lt_a_rows = tb ? k : n, lt_a_cols = tb ? n : k;
  const int lt_b_rows = ta ? m : k, lt_b_cols = ta ? k : m;
  FASTMLP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_32F, lt_a_rows, lt_a_cols, lt_a_rows));
  FASTMLP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_32F, lt_b_rows, lt_b_cols, lt_b_rows));
  FASTMLP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, n, m, n));

  cublasLtMatmulPreference_t pref = nullptr;
  FASTMLP_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint32_t lt_align_a = align_b, lt_align_b = align_a;  // swapped like the operands
  const bool prefs_ok =
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_,
                                           sizeof workspace_bytes_) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &lt_align_a,
                                           sizeof lt_align_a) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &lt_align_b,
                                           sizeof lt_align_b) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                           sizeof align_c) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c,
                                           sizeof align_c) == CUBLAS_STATUS_SUCCESS;
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = prefs_ok ? cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.c, p.c, pref, 1,
                                                                      &result, &found)
                                     : CUBLAS_STATUS_INVALID_VALUE;
  cublasLtMatmulPreferenceDestroy(pref);
  // An epilogue the heuristic rejects (NOT_SUPPORTED or no result) means "use the fallback".
  p.ok = st == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS;
  if (p.ok) p.algo = result.algo;
  return p;
}

bool LtGemm::matmul(bool ta, bool tb, int m, int n, int k, const float* A, const float* B, float* C, Epilogue ep,
                    const float* bias_in, float* bias_grad_out, const void* mask) {
  const bool bias_out = ep == Epilogue::BiasGradA || ep == Epilogue::BiasGradB || ep == Epilogue::DReluBiasGrad;
  const void* bias = bias_out ? static_cast<const void*>(bias_grad_out) : static_cast<const void*>(bias_in);
  // A bias that is not 16-byte aligned (odd layer widths packed into one parameter buffer) takes
  // the fallback rather than an algorithm that may not take it; the mask (the engine's own
  // allocation) is held to the same rule.
  if (ep != Epilogue::Default && (bias == nullptr || alignment_of(bias) < 16)) return false;
  if (uses_mask(ep) && (mask == nullptr || alignment_of(mask) < 16)) return false;
  const uint32_t align_bias = ep == Epilogue::Default ? 0 : alignment_of(bias);
  const uint32_t align_mask = uses_mask(ep) ? alignment_of(mask) : 0;
  Plan& p = plan(Key{ta, tb, m, n, k, ep, alignment_of(A), alignment_of(B), alignment_of(C), align_bias, align_mask},
                 bias, mask);
  if (!p.ok && ep == Epilogue::Default)
    throw std::runtime_error("cuBLASLt found no algorithm for a row-major " + std::to_string(m) + "x" +
                             std::to_string(n) + "x" + std::to_string(k) + " GEMM (transposes " + std::to_string(ta) +
                             std::to_string(tb) + ")");
  if (!p.ok) return false;
  set_epilogue_pointers(p.desc, ep, bias, mask);
  const float one = 1.0f, zero = 0.0f;
  const cublasStatus_t st = cublasLtMatmul(handle_, p.desc, &one, B, p.a, A, p.b, &zero, C, p.c, C, p.c, &p.algo,
                                           workspace_, workspace_bytes_, stream_);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED && ep != Epilogue::Default) {
    p.ok = false;  // checked before anything is launched: remember, and let the caller fall back
    return false;
  }
  check_cublas(st, "cublasLtMatmul", __FILE__, __LINE__);
  return true;
}

}  // namespace fastmlp::cuda
