// exp, tanh and erf of a float in plain arithmetic, for the CPU loops to vectorize.
//
// libm's expf, tanhf and erff are a call per element, which no loop vectorizes: a 784-512-512-10
// tanh network trained 1.67x slower than the same with ReLU (GELU, through erf, 2x), and predict of
// a 1000-class softmax took twice PyTorch's time, most of the difference in those calls. exp and
// tanh are the classic Cephes single-precision algorithms (range reduction, then a minimax
// polynomial), erf polynomials fitted here; all are written with selects instead of branches, so
// GCC vectorizes them at every width FASTMLP_VECTOR_CLONES builds.
// The operations are the same at every vector width and no fused multiply-add is formed
// (-ffp-contract=off), so the CPU's results do not depend on the vector width.
//
// Accuracy (tests/test_elementary.py, against float64 over grids of floats, and special values):
// within 1 ulp for exp, 1.5 for tanh and 2 for erf; exp overflows to inf from 88.72284 on and
// underflows through the subnormals (one rounding) to 0, as libm does; NaN, +-inf and -0 map as
// libm maps them.
//
// Host code only: CUDA device code keeps CUDA's expf, tanhf and erff (math.h), and double keeps libm's
// (the float64 engine is for exactness, not speed).
#pragma once
#if !defined(__CUDA_ARCH__)
#include <cmath>
#include <cstdint>
#include <cstring>

namespace fastmlp::math::elementary {

inline __attribute__((always_inline)) float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// 2^n for n in [-126, 127], from its exponent bits.
inline __attribute__((always_inline)) float pow2(int32_t n) { return bits_to_float(uint32_t(n + 127) << 23); }

inline __attribute__((always_inline)) float exp(float x) {
  // Clamped to where e^x is between 0 after rounding and inf (NaN goes to the low end here and is
  // given back at the end): the arithmetic below never sees an argument it cannot reduce.
  float c = x > -104.0f ? x : -104.0f;
  c = c < 89.0f ? c : 89.0f;
  // n = round(x / ln 2) by the 1.5 * 2^23 trick (exact for |t| < 2^22; SSE2 has no rounding
  // instruction), then r = x - n ln 2 in two parts (Cody-Waite): n * 0.693359375 is exact.
  const float t = c * 1.44269504088896341f;
  const float fn = (t + 12582912.0f) - 12582912.0f;
  const float r = (c - fn * 0.693359375f) + fn * 2.12194440e-4f;
  // e^r on [-ln2/2, ln2/2]: Cephes' expf polynomial.
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  // Times 2^n in two halves, each a normal power of two for n in [-150, 128]: the first product is
  // exact and the second rounds once, into the subnormals or to inf where e^x does.
  const int32_t n = int32_t(fn);
  const int32_t half = n / 2;
  const float e = (p * pow2(half)) * pow2(n - half);
  return x == x ? e : x;
}

inline __attribute__((always_inline)) float tanh(float x) {
  const float a = std::fabs(x);
  // |x| < 0.625: x + x^3 P(x^2), Cephes' tanhf polynomial.
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = x + x * (z * p);
  // Otherwise 1 - 2 / (e^(2|x|) + 1) with x's sign (e^(2|x|) = inf gives 1 exactly; NaN stays NaN).
  const float large = 1.0f - 2.0f / (exp(2.0f * a) + 1.0f);
  const float signed_large = x < 0.0f ? -large : large;
  const float y = a < 0.625f ? small : signed_large;
  return x == 0.0f ? x : y;  // tanh(-0) = -0
}

// erf(x): x + x Q(x^2) for |x| < 1 (Q = erf(x)/x - 1: the exact x plus a small correction rounds
// better than x times a polynomial near 1.13); otherwise 1 - e^(-x^2) G(1/|x|) with x's sign, and 1
// from |x| = 4 on (erfc(4) = 1.5e-8 rounds away). Q (degree 6 in x^2, on [0, 1]) and G (degree 9
// in 1/x, of erfc(x) e^(x^2) on [1, 4]) are least-squares fits in float64; evaluated in float,
// erf is within 2 ulp of the exact value at every float (checked exhaustively against SciPy).
inline __attribute__((always_inline)) float erf(float x) {
  const float z = x * x;
  float q = 8.010494639e-05f;
  q = q * z - 8.051754558e-04f;
  q = q * z + 5.192274228e-03f;
  q = q * z - 2.685540728e-02f;
  q = q * z + 1.128361002e-01f;
  q = q * z - 3.761262596e-01f;
  q = q * z + 1.283791661e-01f;
  const float small = x + x * q;
  float a = std::fabs(x);
  a = a < 4.0f ? a : 4.0f;
  const float t = 1.0f / a;
  float g = 2.997928097e-02f;
  g = g * t - 1.749846363e-01f;
  g = g * t + 4.252311423e-01f;
  g = g * t - 5.168291927e-01f;
  g = g * t + 2.190440811e-01f;
  g = g * t + 2.422872032e-01f;
  g = g * t - 3.805767362e-01f;
  g = g * t + 2.169396920e-02f;
  g = g * t + 5.616079235e-01f;
  g = g * t + 1.305572934e-04f;
  const float large = 1.0f - exp(-(a * a)) * g;
  const float y = std::fabs(x) < 1.0f ? small : (x < 0.0f ? -large : large);
  return x == x ? y : x;
}

}  // namespace fastmlp::math::elementary
#endif
