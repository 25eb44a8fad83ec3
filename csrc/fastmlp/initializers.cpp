// Variance-scaling initializers: uniform ones draw from [-limit, limit) with
// limit = sqrt(3 * scale / fan); normal ones from a normal truncated at two standard deviations
// with stddev = sqrt(scale / fan) / 0.87962566103423978 (Keras's correction for the truncation).
#include "fastmlp/initializers.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "fastmlp/random.h"

namespace fastmlp {
namespace {

double truncated_normal(Random& rng) {
  for (;;) {
    const double z = rng.normal();
    if (std::fabs(z) <= 2.0) return z;
  }
}

}  // namespace

template <typename T>
std::vector<T> initial_parameters(const ModelSpec& spec, const std::vector<InitSpec>& kernels, uint64_t seed) {
  if (kernels.size() != spec.layers.size())
    throw std::invalid_argument("one initializer per layer is required");
  int64_t total = 0;
  const std::vector<LayerParams> layout = parameter_layout(spec, &total);
  std::vector<T> params(total, T(0));  // biases, beta and moving means start at zero
  Random rng(seed);
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    const LayerParams& lp = layout[i];
    // Normalizations start as the identity: gamma and the moving variance are 1 (Keras).
    if (lp.gamma >= 0) std::fill_n(params.begin() + lp.gamma, lp.out, T(1));
    if (lp.moving_var >= 0) std::fill_n(params.begin() + lp.moving_var, lp.out, T(1));
    if (lp.w < 0) continue;  // only Dense kernels are drawn
    const int fan_in = lp.in, fan_out = lp.out;
    const int64_t n = int64_t(fan_in) * fan_out;
    const int64_t off = lp.w;
    const InitSpec& s = kernels[i];
    const std::string& k = s.kind;
    double scale = 0.0, fan = 1.0;
    bool uniform = true, variance_scaling = true;
    if (k == "glorot_uniform" || k == "glorot_normal") {
      scale = 1.0;
      fan = 0.5 * (fan_in + fan_out);
    } else if (k == "he_uniform" || k == "he_normal") {
      scale = 2.0;
      fan = fan_in;
    } else if (k == "lecun_uniform" || k == "lecun_normal") {
      scale = 1.0;
      fan = fan_in;
    } else {
      variance_scaling = false;
    }
    if (variance_scaling) {
      uniform = k.find("uniform") != std::string::npos;
      if (uniform) {
        const double limit = std::sqrt(3.0 * scale / fan);
        for (int64_t j = 0; j < n; ++j) params[off + j] = T((2.0 * rng.uniform() - 1.0) * limit);
      } else {
        const double stddev = std::sqrt(scale / fan) / 0.87962566103423978;
        for (int64_t j = 0; j < n; ++j) params[off + j] = T(truncated_normal(rng) * stddev);
      }
    } else if (k == "random_uniform") {
      if (!(s.b > s.a)) throw std::invalid_argument("random_uniform needs maxval > minval");
      for (int64_t j = 0; j < n; ++j) params[off + j] = T(s.a + (s.b - s.a) * rng.uniform());
    } else if (k == "random_normal") {
      if (!(s.b > 0.0)) throw std::invalid_argument("random_normal needs stddev > 0");
      for (int64_t j = 0; j < n; ++j) params[off + j] = T(s.a + s.b * rng.normal());
    } else if (k != "zeros") {
      throw std::invalid_argument("unknown initializer '" + k + "'");
    }
    // Parameters too large for T (RandomNormal(1e39) in float32, an infinite stddev) would
    // start training from Inf/NaN weights.
    for (int64_t j = 0; j < n; ++j)
      if (!std::isfinite(params[off + j]))
        throw std::invalid_argument("layer " + std::to_string(i) + ": the " + k +
                                    " initializer drew a weight that is not finite in this dtype");
  }
  return params;
}

template std::vector<float> initial_parameters<float>(const ModelSpec&, const std::vector<InitSpec>&, uint64_t);
template std::vector<double> initial_parameters<double>(const ModelSpec&, const std::vector<InitSpec>&, uint64_t);

}  // namespace fastmlp
