// exp, expm1, log1p, tanh and erf of a float in plain arithmetic, for the CPU loops to vectorize.
//
// libm's expf, tanhf and erff are a call per element, which no loop vectorizes: a 784-512-512-10
// tanh network trained 1.67x slower than the same with ReLU (GELU, through erf, 2x), and predict of
// a 1000-class softmax took twice PyTorch's time, most of the difference in those calls; softplus
// (log1pf, expm1f) trained 2.8x slower than ReLU, SELU (expm1f) 1.3x. exp and tanh are the classic
// Cephes single-precision algorithms (range reduction, then a minimax polynomial), log1p Cephes'
// logf polynomial with the rounding of 1 + x corrected, expm1 exp's reduction with a Taylor
// polynomial, erf polynomials fitted here; all are written with selects instead of branches, so
// GCC vectorizes them at every width FASTMLP_VECTOR_CLONES builds.
// The operations are the same at every vector width and no fused multiply-add is formed
// (-ffp-contract=off), so the CPU's results do not depend on the vector width.
//
// Accuracy (tests/test_elementary.py, against float64 over grids of floats, and special values):
// within 1 ulp for exp and log1p, 1.5 for tanh and expm1, and 2 for erf; exp overflows to inf from
// 88.72284 on and underflows through the subnormals (one rounding) to 0, as libm does; NaN, +-inf
// and -0 map as libm maps them.
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

inline __attribute__((always_inline)) uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// 2^n for n in [-126, 127], from its exponent bits.
inline __attribute__((always_inline)) float pow2(int32_t n) { return bits_to_float(uint32_t(n + 127) << 23); }

// x = n ln2 + r with |r| <= ln2/2, for |x| < 2^22 (exp and expm1): n = round(x / ln 2) by the
// 1.5 * 2^23 trick (SSE2 has no rounding instruction), r in two parts (Cody-Waite): n * 0.693359375
// is exact.
struct Ln2Reduced {
  float n, r;
};
inline __attribute__((always_inline)) Ln2Reduced reduce_by_ln2(float x) {
  const float t = x * 1.44269504088896341f;
  const float n = (t + 12582912.0f) - 12582912.0f;
  return {n, (x - n * 0.693359375f) + n * 2.12194440e-4f};
}

// v 2^n in two halves, each a normal power of two for n in [-150, 128]: the first product is exact
// and the second rounds once, into the subnormals or to inf where v 2^n does.
inline __attribute__((always_inline)) float times_pow2(float v, int32_t n) {
  const int32_t half = n / 2;
  return (v * pow2(half)) * pow2(n - half);
}

inline __attribute__((always_inline)) float exp(float x) {
  // Clamped to where e^x is between 0 after rounding and inf (NaN goes to the low end here and is
  // given back at the end): the arithmetic below never sees an argument it cannot reduce.
  float c = x > -104.0f ? x : -104.0f;
  c = c < 89.0f ? c : 89.0f;
  const Ln2Reduced a = reduce_by_ln2(c);
  const float r = a.r;
  // e^r on [-ln2/2, ln2/2]: Cephes' expf polynomial.
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const float e = times_pow2(p, int32_t(a.n));
  return x == x ? e : x;
}

// e^x - 1 without the cancellation of exp(x) - 1 near 0. x = n ln2 + r as in exp, expm1(r) = r +
// r^2 Q(r) with Q the Taylor polynomial of degree 6 (its remainder is below 1e-9 relative on
// |r| <= ln2/2), then e^x - 1 = (2^n - 1) + 2^n expm1(r): 2^n - 1 is exact for -24 <= n <= 24 (below,
// it rounds to -1, under an ulp of the result) and the sum rounds once. From n = 25 on (x above
// about 17) the 1 is at most half an ulp of e^x, taken as 2^n (1 + expm1(r)) from the same
// polynomial (exp's own would cost a second evaluation per element: vector code computes both
// sides of a select); below -30 the result is -1 after rounding.
inline __attribute__((always_inline)) float expm1(float x) {
  float c = x > -30.0f ? x : -30.0f;
  c = c < 89.0f ? c : 89.0f;
  const Ln2Reduced a = reduce_by_ln2(c);
  const float r = a.r;
  float q = 2.48015873e-5f;  // 1/8!
  q = q * r + 1.98412698e-4f;  // 1/7!
  q = q * r + 1.38888889e-3f;
  q = q * r + 8.33333333e-3f;
  q = q * r + 4.16666667e-2f;
  q = q * r + 1.66666667e-1f;
  q = q * r + 0.5f;
  const float p = r + (r * r) * q;
  const int32_t n = int32_t(a.n);
  const float s = pow2(n < 24 ? n : 24);
  const float y = n > 24 ? times_pow2(1.0f + p, n) : (s - 1.0f) + s * p;
  const float signed_zero = x == 0.0f ? x : y;  // expm1(-0) = -0
  return x == x ? signed_zero : x;
}

// log(1 + x): u = 1 + x rounded, c = the part of x that rounding lost, divided by u (log(u + u c) ~
// log(u) + c); u = 2^k m with m in [sqrt(1/2), sqrt(2)), log(m) = f - f^2/2 + f^3 P(f) with f = m - 1
// (exact) and P Cephes' logf polynomial; k ln2 is split in two parts (Cody-Waite) and f + k ln2_hi is
// exact for k <= 1.
inline __attribute__((always_inline)) float log1p(float x) {
  const float u = 1.0f + x;
  const uint32_t bits = float_to_bits(u);
  int32_t k = int32_t((bits >> 23) & 0xff) - 127;
  // u - x is exact for u >= 2 (then x >= 1, but for x = 1 - 2^-24, where c is lost: half an ulp)
  // and u - 1 is for u < 2; from 2^25 on c is below u's ulp.
  float c = (k > 0 ? 1.0f - (u - x) : x - (u - 1.0f)) / u;
  c = k < 25 ? c : 0.0f;
  float m = bits_to_float((bits & 0x7fffffu) | 0x3f800000u);
  const bool above = m > 1.41421356f;
  m = above ? m * 0.5f : m;
  k = above ? k + 1 : k;
  const float f = m - 1.0f;
  const float e = float(k);
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  float y = f * z * p;
  y = y + (e * -2.12194440e-4f + c);
  y = y + -0.5f * z;
  float r = (f + y) + e * 0.693359375f;
  // Where the arithmetic above does not hold: +inf, -1 (u = 0), below -1, +-0 and NaN.
  r = x == INFINITY ? x : r;
  r = x == -1.0f ? -INFINITY : r;
  r = x < -1.0f ? NAN : r;
  r = x == 0.0f ? x : r;
  return x == x ? r : x;
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
