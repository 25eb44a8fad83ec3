// Thread control and identification of the BLAS the CPU backend was linked with.
#include "cpu/blas.h"

#if !defined(FASTMLP_SCIPY_OPENBLAS)
// Weak: present when the system BLAS is OpenBLAS, null for reference BLAS or others.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
extern "C" char* openblas_get_config(void) __attribute__((weak));
#endif

namespace fastmlp::cpu {

void blas_set_num_threads(int n) {
#if defined(FASTMLP_SCIPY_OPENBLAS)
  scipy_openblas_set_num_threads(n);
#else
  if (openblas_set_num_threads) openblas_set_num_threads(n);
#endif
}

std::string blas_name() {
#if defined(FASTMLP_SCIPY_OPENBLAS)
  return std::string("scipy-openblas32 ") + scipy_openblas_get_config();
#else
  if (openblas_get_config) return std::string("system OpenBLAS ") + openblas_get_config();
  return "system BLAS (" FASTMLP_BLAS_LIBRARIES ")";
#endif
}

}  // namespace fastmlp::cpu
