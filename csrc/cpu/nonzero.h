// The positions of a row's nonzero values: the one-row forward product (blas.cpp) visits only
// those, about 20% of an MNIST digit's pixels.
#pragma once

namespace fastmlp::cpu {

// A row counts as sparse, for the paths that visit only nonzero values, when at least this share
// of it is zero (chosen, not tuned: the crossover was not measured).
constexpr double kSparseRowZeros = 0.25;

// rows[0, count) = the indices of x's nonzero values, listed without a branch per value (zeros in
// runs, or scattered at random as a ReLU layer's, would be half missed by a branch predictor);
// returns count. rows has room for k. Locals only: a count kept in memory (a lambda's captured
// variable) made each value wait for the previous store.
template <typename T>
int list_nonzero(const T* x, int k, int* rows) {
  int count = 0;
  for (int i = 0; i < k; ++i) {
    rows[count] = i;
    count += x[i] != T(0);
  }
  return count;
}

}  // namespace fastmlp::cpu
