// Weight initializers (Keras's names and formulas); biases always start at zero.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "fastmlp/engine.h"

namespace fastmlp {

struct InitSpec {
  std::string kind = "glorot_uniform";  // glorot_uniform|glorot_normal|he_uniform|he_normal|
                                        // lecun_uniform|lecun_normal|random_uniform|random_normal|zeros
  double a = -0.05, b = 0.05;           // random_uniform: [a, b); random_normal: mean a, stddev b
};

// Fills a host vector of spec's flat parameter layout. One InitSpec per layer.
template <typename T>
std::vector<T> initial_parameters(const ModelSpec& spec, const std::vector<InitSpec>& kernels, uint64_t seed);

}  // namespace fastmlp
