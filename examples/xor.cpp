// Embedding fastmlp as a native library: train XOR with the C++ core alone (no Python).
// Built with -DFASTMLP_EXAMPLES=ON; tests/test_embedding.py builds and runs it.
#include <cstdio>
#include <vector>

#include "fastmlp/engine.h"
#include "fastmlp/initializers.h"
#include "fastmlp/random.h"

int main() {
  using namespace fastmlp;
  ModelSpec spec;
  spec.input_dim = 2;
  spec.layers = {dense_layer(8, {Activation::Tanh}), dense_layer(1, {Activation::Sigmoid})};
  spec.loss = Loss::BinaryCrossentropy;
  spec.metric = Metric::BinaryAccuracy;

  Engine<float> engine(spec, "cpu");
  const auto init = initial_parameters<float>(spec, {InitSpec{}, InitSpec{}}, /*seed=*/42);
  engine.set_params(init.data());
  OptimizerConfig adam;
  adam.kind = OptimizerKind::Adam;
  adam.lr = 0.05;
  engine.set_optimizer(adam);

  const std::vector<float> x = {0, 0, 0, 1, 1, 0, 1, 1};
  const std::vector<float> y = {0, 1, 1, 0};
  auto data = engine.upload(x.data(), y.data(), 4);
  EpochResult r;
  for (int epoch = 0; epoch < 500; ++epoch) r = engine.train_epoch(*data, shuffled_indices(4, epoch), 4);

  std::vector<float> out(4);
  engine.predict(*data, 4, out.data());
  int correct = 0;
  for (int i = 0; i < 4; ++i) {
    std::printf("xor(%g, %g) = %.4f\n", x[2 * i], x[2 * i + 1], out[i]);
    correct += (out[i] > 0.5f) == (y[i] > 0.5f);
  }
  std::printf("loss %.6f, %d/4 correct\n", r.loss, correct);
  return correct == 4 && r.loss < 0.05 ? 0 : 1;
}
