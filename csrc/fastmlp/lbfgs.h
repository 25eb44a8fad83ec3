// L-BFGS with torch.optim.LBFGS's semantics: one call is one `step(closure)`, up to max_iter
// iterations of the two-loop recursion over the last history_size curvature pairs, with a fixed
// step (lr; the very first one scaled by min(1, 1/|g|_1)) or a strong-Wolfe line search, and
// torch's stopping tests. The history persists between calls, as torch's optimizer state does.
//
// It knows nothing of models or backends: the objective evaluates the loss and its gradient at
// a parameter vector (the engine runs a full-batch forward and backward pass there). Vectors are
// host doubles, whatever the model's precision.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <vector>

namespace fastmlp {

struct LbfgsConfig {
  double lr = 1.0;
  int max_iter = 20;
  int max_eval = 25;  // torch's default: max_iter * 5 / 4
  double tolerance_grad = 1e-7;
  double tolerance_change = 1e-9;
  int history_size = 100;
  bool strong_wolfe = false;  // line_search_fn="strong_wolfe"; otherwise a fixed step lr
};

struct LbfgsState {
  int64_t func_evals = 0;  // over all calls
  int64_t n_iter = 0;      // over all calls
  std::vector<double> d, prev_flat_grad;
  double t = 0.0, prev_loss = 0.0, h_diag = 1.0;
  // y_i and s_i, shared so that copying a state (to commit it only on success) copies pointers
  std::deque<std::shared_ptr<const std::vector<double>>> old_dirs, old_stps;
  std::deque<double> ro;                               // 1 / (y_i . s_i)
};

// Sets the model's parameters to x, and returns the loss there with its gradient in grad.
using LbfgsObjective = std::function<double(const std::vector<double>& x, std::vector<double>& grad)>;

struct LbfgsResult {
  double loss = 0.0;  // at the parameters the call started from (torch returns this)
  int evaluations = 0;
  int iterations = 0;
  double final_loss = 0.0;  // the last loss the iteration accepted (line search or evaluation)
};

// One step from x (updated in place); on return the objective's last call may have left the
// model elsewhere, so the caller sets the model to x afterwards.
LbfgsResult lbfgs_step(const LbfgsConfig& config, LbfgsState& state, std::vector<double>& x,
                       const LbfgsObjective& objective);

}  // namespace fastmlp
