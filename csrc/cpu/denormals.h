// Subnormal ("denormal") floats in the CPU backend's arithmetic: flushed to zero by default.
//
// Why: x86 CPUs take a slow path for arithmetic on subnormal operands and results. Adam's first
// moment of a weight whose gradient turns exactly zero (a unit that died, an MNIST pixel that is
// rarely lit) decays by beta1 every step into the subnormal range, and the update over such
// weights slows the whole step (docs/performance.md: 784-512-512-10 Adam at batch 16 ran
// its later epochs about 20% slower than its first). TensorFlow runs its CPU kernels this way too;
// PyTorch leaves it to torch.set_flush_denormal.
//
// The mode is per thread (the flush-to-zero and denormals-are-zero bits of x86's MXCSR), so it is
// set for the duration of each native call from Python (without_gil in bindings.cpp), and
// a pool worker takes the mode of the thread whose job it runs (thread_pool.cpp): a C++ program
// that embeds the core computes in its own threads' mode, flushed or not. Values below
// FLT_MIN (1.2e-38; DBL_MIN, 2.2e-308, for float64) then read and compute as zero; nothing else
// changes. On other CPUs (and 32-bit x86 without SSE) the mode is always IEEE: fastmlp flushes
// only through x86's MXCSR (kDenormalFlushSupported).
#pragma once
#include <cstdint>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace fastmlp::cpu {

#if (defined(__x86_64__) || defined(__i386__)) && defined(__SSE__)
constexpr bool kDenormalFlushSupported = true;
constexpr uint32_t kFlushToZero = 0x8000, kDenormalsAreZero = 0x0040;
#else
constexpr bool kDenormalFlushSupported = false;
constexpr uint32_t kFlushToZero = 0, kDenormalsAreZero = 0;
#endif
constexpr uint32_t kFlushDenormals = kFlushToZero | kDenormalsAreZero;

// The calling thread's flush bits: kFlushDenormals, or 0 for IEEE subnormals.
inline uint32_t denormal_mode() {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__SSE__)
  return _mm_getcsr() & kFlushDenormals;
#else
  return 0;
#endif
}

inline void set_denormal_mode(uint32_t mode) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__SSE__)
  _mm_setcsr((_mm_getcsr() & ~kFlushDenormals) | (mode & kFlushDenormals));
#else
  (void)mode;
#endif
}

// Sets the calling thread's mode while alive, then restores the one it had.
class ScopedDenormalMode {
 public:
  explicit ScopedDenormalMode(uint32_t mode) : previous_(denormal_mode()) {
    if (mode != previous_) set_denormal_mode(mode);
  }
  ~ScopedDenormalMode() {
    if (denormal_mode() != previous_) set_denormal_mode(previous_);
  }
  ScopedDenormalMode(const ScopedDenormalMode&) = delete;
  ScopedDenormalMode& operator=(const ScopedDenormalMode&) = delete;

 private:
  uint32_t previous_;
};

}  // namespace fastmlp::cpu
