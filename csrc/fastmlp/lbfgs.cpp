// L-BFGS (lbfgs.h): the iteration of torch.optim.LBFGS.step and its strong-Wolfe line search
// (Nocedal & Wright, Algorithms 3.5 and 3.6, with minFunc's cubic interpolation), written for
// host vectors of doubles.
#include "fastmlp/lbfgs.h"

#include <algorithm>
#include <cmath>

namespace fastmlp {
namespace {

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

double max_abs(const std::vector<double>& a) {
  double m = 0.0;
  for (double v : a) m = std::max(m, std::fabs(v));
  return m;
}

// The minimizer of the cubic through (x1, f1, g1) and (x2, f2, g2), clamped to the bounds
// (default: the interval between x1 and x2); its midpoint when the cubic has no minimum.
double cubic_interpolate(double x1, double f1, double g1, double x2, double f2, double g2, const double* bounds) {
  const double lo = bounds ? bounds[0] : std::min(x1, x2);
  const double hi = bounds ? bounds[1] : std::max(x1, x2);
  const double d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2);
  const double d2_square = d1 * d1 - g1 * g2;
  if (d2_square >= 0.0) {
    const double d2 = std::sqrt(d2_square);
    const double min_pos = x1 <= x2 ? x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2.0 * d2))
                                    : x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2.0 * d2));
    return std::min(std::max(min_pos, lo), hi);
  }
  return (lo + hi) / 2.0;
}

struct LineSearchResult {
  double loss, t;
  std::vector<double> grad;
  int evaluations;
};

// Strong-Wolfe line search along d from x (loss f, gradient g, slope gtd = g.d), starting at
// step t; evaluate(t, grad) returns the loss at x + t d.
LineSearchResult strong_wolfe(const std::function<double(double, std::vector<double>&)>& evaluate,
                              const std::vector<double>& d, double t, double f, const std::vector<double>& g,
                              double gtd, double tolerance_change, int max_ls) {
  constexpr double c1 = 1e-4, c2 = 0.9;
  const double d_norm = max_abs(d);
  std::vector<double> g_new;
  double f_new = evaluate(t, g_new);
  int evals = 1;
  double gtd_new = dot(g_new, d);
  double t_prev = 0.0, f_prev = f, gtd_prev = gtd;
  std::vector<double> g_prev = g;
  bool done = false;
  int ls_iter = 0;
  // The bracket: one point when the Wolfe conditions already hold, else two.
  std::vector<double> bracket, bracket_f, bracket_gtd;
  std::vector<std::vector<double>> bracket_g;
  while (ls_iter < max_ls) {
    if (f_new > f + c1 * t * gtd || (ls_iter > 1 && f_new >= f_prev)) {
      bracket = {t_prev, t}, bracket_f = {f_prev, f_new}, bracket_g = {g_prev, g_new};
      bracket_gtd = {gtd_prev, gtd_new};
      break;
    }
    if (std::fabs(gtd_new) <= -c2 * gtd) {
      bracket = {t}, bracket_f = {f_new}, bracket_g = {g_new};
      done = true;
      break;
    }
    if (gtd_new >= 0.0) {
      bracket = {t_prev, t}, bracket_f = {f_prev, f_new}, bracket_g = {g_prev, g_new};
      bracket_gtd = {gtd_prev, gtd_new};
      break;
    }
    // Extrapolate between 1.01 t and 10 t.
    const double bounds[2] = {t + 0.01 * (t - t_prev), t * 10.0};
    const double next = cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds);
    t_prev = t;
    f_prev = f_new;
    g_prev = g_new;
    gtd_prev = gtd_new;
    t = next;
    f_new = evaluate(t, g_new);
    ++evals;
    gtd_new = dot(g_new, d);
    ++ls_iter;
  }
  if (ls_iter == max_ls) {  // reached the limit: the bracket is [0, t]
    bracket = {0.0, t}, bracket_f = {f, f_new}, bracket_g = {g, g_new};
  }
  // Zoom: shrink the bracket until the strong Wolfe conditions hold.
  bool insufficient_progress = false;
  int low = bracket_f[0] <= bracket_f.back() ? 0 : 1, high = 1 - low;
  while (!done && ls_iter < max_ls) {
    if (std::fabs(bracket[1] - bracket[0]) * d_norm < tolerance_change) break;
    t = cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1], nullptr);
    const double b_max = std::max(bracket[0], bracket[1]), b_min = std::min(bracket[0], bracket[1]);
    const double eps = 0.1 * (b_max - b_min);
    if (std::min(b_max - t, t - b_min) < eps) {  // too close to an end: move away or note it
      if (insufficient_progress || t >= b_max || t <= b_min) {
        t = std::fabs(t - b_max) < std::fabs(t - b_min) ? b_max - eps : b_min + eps;
        insufficient_progress = false;
      } else {
        insufficient_progress = true;
      }
    } else {
      insufficient_progress = false;
    }
    f_new = evaluate(t, g_new);
    ++evals;
    gtd_new = dot(g_new, d);
    ++ls_iter;
    if (f_new > f + c1 * t * gtd || f_new >= bracket_f[low]) {
      bracket[high] = t, bracket_f[high] = f_new, bracket_g[high] = g_new, bracket_gtd[high] = gtd_new;
      low = bracket_f[0] <= bracket_f[1] ? 0 : 1;
      high = 1 - low;
    } else {
      if (std::fabs(gtd_new) <= -c2 * gtd) {
        done = true;
      } else if (gtd_new * (bracket[high] - bracket[low]) >= 0.0) {
        bracket[high] = bracket[low], bracket_f[high] = bracket_f[low];
        bracket_g[high] = bracket_g[low], bracket_gtd[high] = bracket_gtd[low];
      }
      bracket[low] = t, bracket_f[low] = f_new, bracket_g[low] = g_new, bracket_gtd[low] = gtd_new;
    }
  }
  return {bracket_f[low], bracket[low], bracket_g[low], evals};
}

}  // namespace

LbfgsResult lbfgs_step(const LbfgsConfig& cfg, LbfgsState& st, std::vector<double>& x, const LbfgsObjective& objective) {
  std::vector<double> flat_grad;
  const double orig_loss = objective(x, flat_grad);
  double loss = orig_loss;
  int current_evals = 1;
  st.func_evals += 1;
  LbfgsResult result{orig_loss, 1};
  if (max_abs(flat_grad) <= cfg.tolerance_grad) return result;
  const size_t n = x.size();
  int n_iter = 0;
  bool opt_cond = false;
  while (n_iter < cfg.max_iter) {
    ++n_iter;
    ++st.n_iter;
    if (st.n_iter == 1) {
      st.d.assign(n, 0.0);
      for (size_t i = 0; i < n; ++i) st.d[i] = -flat_grad[i];
      st.old_dirs.clear();
      st.old_stps.clear();
      st.ro.clear();
      st.h_diag = 1.0;
    } else {
      // The newest curvature pair, kept when y.s is safely positive.
      std::vector<double> y(n), s(n);
      for (size_t i = 0; i < n; ++i) {
        y[i] = flat_grad[i] - st.prev_flat_grad[i];
        s[i] = st.d[i] * st.t;
      }
      const double ys = dot(y, s);
      if (ys > 1e-10) {
        while (int(st.old_dirs.size()) >= cfg.history_size) {  // >=: a smaller history_size takes effect
          st.old_dirs.pop_front();
          st.old_stps.pop_front();
          st.ro.pop_front();
        }
        st.h_diag = ys / dot(y, y);
        st.old_dirs.push_back(std::make_shared<const std::vector<double>>(std::move(y)));
        st.old_stps.push_back(std::make_shared<const std::vector<double>>(std::move(s)));
        st.ro.push_back(1.0 / ys);
      }
      // The two-loop recursion: d = -H g with H the L-BFGS inverse-Hessian approximation.
      const int num_old = int(st.old_dirs.size());
      std::vector<double> al(size_t(num_old), 0.0), q(n);
      for (size_t i = 0; i < n; ++i) q[i] = -flat_grad[i];
      for (int i = num_old - 1; i >= 0; --i) {
        const std::vector<double>&s_i = *st.old_stps[i], &y_i = *st.old_dirs[i];
        al[i] = dot(s_i, q) * st.ro[i];
        for (size_t k = 0; k < n; ++k) q[k] -= al[i] * y_i[k];
      }
      for (size_t k = 0; k < n; ++k) q[k] *= st.h_diag;
      for (int i = 0; i < num_old; ++i) {
        const std::vector<double>&s_i = *st.old_stps[i], &y_i = *st.old_dirs[i];
        const double be = dot(y_i, q) * st.ro[i];
        for (size_t k = 0; k < n; ++k) q[k] += (al[i] - be) * s_i[k];
      }
      st.d = std::move(q);
    }
    st.prev_flat_grad = flat_grad;
    st.prev_loss = loss;
    if (st.n_iter == 1) {
      double l1 = 0.0;
      for (double v : flat_grad) l1 += std::fabs(v);
      st.t = std::min(1.0, 1.0 / l1) * cfg.lr;
    } else {
      st.t = cfg.lr;
    }
    const double gtd = dot(flat_grad, st.d);
    if (gtd > -cfg.tolerance_change) break;  // not a descent direction
    int ls_evals = 0;
    if (cfg.strong_wolfe) {
      const std::vector<double> x_init = x;
      std::vector<double> probe(n);
      auto evaluate = [&](double t, std::vector<double>& grad) {
        for (size_t i = 0; i < n; ++i) probe[i] = x_init[i] + t * st.d[i];
        return objective(probe, grad);
      };
      // torch passes its _strong_wolfe no tolerance_change: the zoom's stays the default 1e-9.
      LineSearchResult ls = strong_wolfe(evaluate, st.d, st.t, loss, flat_grad, gtd, 1e-9, cfg.max_eval - current_evals);
      loss = ls.loss;
      flat_grad = std::move(ls.grad);
      st.t = ls.t;
      ls_evals = ls.evaluations;
      for (size_t i = 0; i < n; ++i) x[i] += st.t * st.d[i];
      opt_cond = max_abs(flat_grad) <= cfg.tolerance_grad;
    } else {
      for (size_t i = 0; i < n; ++i) x[i] += st.t * st.d[i];
      if (n_iter != cfg.max_iter) {  // the last iteration's point is evaluated by the next call
        loss = objective(x, flat_grad);
        opt_cond = max_abs(flat_grad) <= cfg.tolerance_grad;
        ls_evals = 1;
      }
    }
    current_evals += ls_evals;
    st.func_evals += ls_evals;
    if (n_iter == cfg.max_iter || current_evals >= cfg.max_eval || opt_cond) break;
    double step = 0.0;  // the size of the last step, max |t d|
    for (double v : st.d) step = std::max(step, std::fabs(v * st.t));
    if (step <= cfg.tolerance_change) break;
    if (std::fabs(loss - st.prev_loss) < cfg.tolerance_change) break;
  }
  result.evaluations = current_evals;
  result.iterations = n_iter;
  result.final_loss = loss;
  return result;
}

}  // namespace fastmlp
