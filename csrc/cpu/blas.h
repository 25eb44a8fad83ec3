// Row-major GEMM through whichever CBLAS the build found: the scipy-openblas32 wheel (its
// symbols carry a scipy_ prefix) or a system BLAS located by CMake's FindBLAS.
#pragma once
#include <string>

#if defined(FASTMLP_SCIPY_OPENBLAS)
#include <cblas.h>  // from scipy_openblas32/include, declares scipy_cblas_* and scipy_openblas_*
#define FASTMLP_CBLAS(name) scipy_cblas_##name
#else
extern "C" {
enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112 };
void cblas_sgemm(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, int, int, int, float, const float*, int,
                 const float*, int, float, float*, int);
void cblas_dgemm(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, int, int, int, double, const double*, int,
                 const double*, int, double, double*, int);
}
#define FASTMLP_CBLAS(name) cblas_##name
#endif

namespace fastmlp::cpu {

// C (m x n) = alpha * op(A) op(B) + beta * C, all row-major. Large products are split over the
// pool's threads by blocks of C, the BLAS itself running on one thread (with the scipy-openblas32
// wheel; a system BLAS keeps its own threading: blas.cpp says why).
void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* A, int lda, const float* B, int ldb,
          float beta, float* C, int ldc);
void gemm(bool ta, bool tb, int m, int n, int k, double alpha, const double* A, int lda, const double* B, int ldb,
          double beta, double* C, int ldc);

// Threads of a system BLAS (set_num_threads); nothing with scipy-openblas32, which stays on one.
void blas_set_num_threads(int n);
std::string blas_name();

}  // namespace fastmlp::cpu
