"""Optimizers with torch.optim's update formulas, parameter names and defaults.

Each update is one fused native pass over the flat parameter buffer (csrc/fastmlp/math.h,
optimizer_update); docs/formulas.md writes every formula out. `weight_decay` adds
weight_decay * p to the gradient of every parameter, as PyTorch does (AdamW decouples it:
p *= 1 - lr * weight_decay before the Adam step). Layer regularizers are separate and act on
kernels only. `lr` may be a number or an fm.schedules schedule; `learning_rate` is an alias.

Every optimizer also takes Keras's gradient clipping, applied to the gradient (loss plus
regularizers) before the optimizer's own weight decay and momentum: `clipvalue` clips each
element to [-clipvalue, clipvalue], `clipnorm` each parameter tensor (a kernel, a bias) to that
L2 norm, `global_clipnorm` all gradients together, as torch.nn.utils.clip_grad_norm_ does. At
most one of them may be set.
"""
from __future__ import annotations

import copy

from . import _core
from ._enums import OPTIMIZER_IDS
from ._validation import boolean, config_class, positive_int, real_number
from .schedules import Constant, Schedule


def _number(name, v, low=0.0, low_inclusive=True, high=None, high_inclusive=False):
    # Python and NumPy numbers alike (np.float32(1e-3) is a valid lr); 10**400 is not finite.
    return real_number(v, name, low, low_inclusive, high, high_inclusive)


_CLIPPING = ("clipvalue", "clipnorm", "global_clipnorm")


class Optimizer:
    kind = "sgd"
    _fields: tuple = ()

    def __init__(self, lr, learning_rate=None, weight_decay=0.0, **clipping):
        if learning_rate is not None:
            lr = learning_rate
        # lr >= 0: PyTorch and Keras accept 0 (warm-up schedules start there); negative is an error
        if isinstance(lr, Schedule):
            self.schedule = lr
        else:
            self.schedule = Constant(_number("lr", lr))
        self.weight_decay = _number("weight_decay", weight_decay)
        self._set_clipping(**clipping)

    def _set_clipping(self, clipvalue=None, clipnorm=None, global_clipnorm=None):
        # None (or absent) is off; a value must be > 0, as in Keras.
        values = {"clipvalue": clipvalue, "clipnorm": clipnorm, "global_clipnorm": global_clipnorm}
        for name, v in values.items():
            setattr(self, name, None if v is None else _number(name, v, low=0.0, low_inclusive=False))
        chosen = [name for name in _CLIPPING if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise ValueError(f"only one of clipvalue, clipnorm and global_clipnorm may be set, got {', '.join(chosen)}")

    @property
    def lr(self) -> float:
        return self.schedule.initial_lr

    @lr.setter
    def lr(self, value):
        self.schedule.initial_lr = _number("lr", value)

    # Keras's (and scikit-learn's optimizers') name for the same rate.
    learning_rate = lr

    def copy(self) -> "Optimizer":
        """An independent deep copy (schedule included): a model compiled with it shares no state
        with others, so set_learning_rate on one model leaves the others' rates alone."""
        return copy.deepcopy(self)

    def native(self):
        c = _core.OptimizerConfig()
        c.kind = OPTIMIZER_IDS[self.kind]
        c.lr = self.schedule.initial_lr
        c.schedule = self.schedule.native()
        c.weight_decay = self.weight_decay
        for name in _CLIPPING:
            setattr(c, name, getattr(self, name) or 0.0)
        self._fill(c)
        return c

    def _fill(self, c):
        pass

    def nonnegative_state_slots(self) -> dict:
        """{slot: name} of the state slots that accumulate squared gradients and so can never be
        negative (a model file claiming otherwise is corrupt)."""
        return {}

    def get_config(self) -> dict:
        cfg = {"kind": self.kind, "schedule": self.schedule.get_config(), "weight_decay": self.weight_decay}
        cfg.update({f: getattr(self, f) for f in self._fields})
        cfg.update({name: getattr(self, name) for name in _CLIPPING if getattr(self, name) is not None})
        return cfg

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"

    def describe(self) -> str:
        """The resolved settings, e.g. "RMSprop(lr=0.01, alpha=0.99, eps=1e-08, ...)", and where
        they differ from Keras's defaults for the same optimizer name."""
        cfg = self.get_config()
        lr = self.schedule.initial_lr
        schedule = cfg["schedule"].get("kind", "constant") if isinstance(cfg["schedule"], dict) else "constant"
        items = [f"lr={lr:g}" + ("" if schedule == "constant" else f" ({schedule} schedule)")]
        items += [f"{f}={getattr(self, f)!r}" for f in self._fields]
        items.append(f"weight_decay={self.weight_decay:g}")
        items += [f"{name}={getattr(self, name):g}" for name in _CLIPPING if getattr(self, name) is not None]
        text = f"{type(self).__name__}({', '.join(items)})"
        keras = KERAS_DEFAULTS.get(self.kind)
        if keras is not None:
            text += f"; Keras's {type(self).__name__} defaults differ: {keras}"
        return text


# Where PyTorch's defaults (fastmlp's) and Keras's differ for the same name: summary() says so,
# since "rmsprop" in Keras code means lr=0.001, rho=0.9 and here lr=0.01, alpha=0.99.
KERAS_DEFAULTS = {
    "sgd": "learning_rate=0.01",
    "adagrad": "learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7",
    "rmsprop": "learning_rate=0.001, rho=0.9, epsilon=1e-7",
    "adadelta": "learning_rate=0.001, rho=0.95, epsilon=1e-7",
    "adam": "epsilon=1e-7",
    "adamw": "weight_decay=0.004, epsilon=1e-7",
    "nadam": "learning_rate=0.001, epsilon=1e-7",
}


class SGD(Optimizer):
    """p -= lr * g, with optional (Nesterov) momentum: buf = momentum*buf + (1-dampening)*g."""

    kind = "sgd"
    _fields = ("momentum", "dampening", "nesterov")

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, *, learning_rate=None,
                 **clipping):
        super().__init__(lr, learning_rate, weight_decay, **clipping)
        self.momentum = _number("momentum", momentum)
        self.dampening = _number("dampening", dampening)
        self.nesterov = boolean(nesterov, "nesterov")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening")

    def _fill(self, c):
        c.momentum, c.dampening, c.nesterov = self.momentum, self.dampening, self.nesterov


class Adagrad(Optimizer):
    """sum += g^2; p -= lr / (1 + (t-1)*lr_decay) * g / (sqrt(sum) + eps)."""

    kind = "adagrad"
    _fields = ("lr_decay", "initial_accumulator_value", "eps")

    def __init__(self, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, *,
                 learning_rate=None, **clipping):
        super().__init__(lr, learning_rate, weight_decay, **clipping)
        self.lr_decay = _number("lr_decay", lr_decay)
        self.initial_accumulator_value = _number("initial_accumulator_value", initial_accumulator_value)
        self.eps = _number("eps", eps)

    def _fill(self, c):
        c.lr_decay, c.initial_accumulator_value, c.eps = self.lr_decay, self.initial_accumulator_value, self.eps

    def nonnegative_state_slots(self) -> dict:
        return {0: "Adagrad sum"}


class RMSprop(Optimizer):
    """v = alpha*v + (1-alpha)*g^2; p -= lr * g / (sqrt(v [- mean(g)^2 if centered]) + eps), with momentum."""

    kind = "rmsprop"
    _fields = ("alpha", "eps", "momentum", "centered")

    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, *,
                 learning_rate=None, **clipping):
        super().__init__(lr, learning_rate, weight_decay, **clipping)
        self.alpha = _number("alpha", alpha, high=1.0, high_inclusive=True)
        self.eps = _number("eps", eps)
        self.momentum = _number("momentum", momentum)
        self.centered = boolean(centered, "centered")

    def _fill(self, c):
        c.alpha, c.eps, c.momentum, c.centered = self.alpha, self.eps, self.momentum, self.centered

    def nonnegative_state_slots(self) -> dict:
        return {0: "square average"}


class Adadelta(Optimizer):
    """v = rho*v + (1-rho)*g^2; d = sqrt(u+eps)/sqrt(v+eps)*g; u = rho*u + (1-rho)*d^2; p -= lr*d."""

    kind = "adadelta"
    _fields = ("rho", "eps")

    def __init__(self, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, learning_rate=None, **clipping):
        super().__init__(lr, learning_rate, weight_decay, **clipping)
        self.rho = _number("rho", rho, high=1.0, high_inclusive=True)
        self.eps = _number("eps", eps)

    def _fill(self, c):
        c.rho, c.eps = self.rho, self.eps

    def nonnegative_state_slots(self) -> dict:
        return {0: "square average", 1: "accumulated update"}


class Adam(Optimizer):
    """m, v moving averages; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps); optional AMSGrad."""

    kind = "adam"
    _fields = ("betas", "eps", "amsgrad")

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 learning_rate=None, beta_1=None, beta_2=None, **clipping):
        super().__init__(lr, learning_rate, weight_decay, **clipping)
        self.betas = _betas(betas, beta_1, beta_2)
        self.eps = _number("eps", eps)
        self.amsgrad = boolean(amsgrad, "amsgrad")

    def _fill(self, c):
        c.beta1, c.beta2 = self.betas
        c.eps, c.amsgrad = self.eps, self.amsgrad

    def nonnegative_state_slots(self) -> dict:
        return {1: "second moment v", 2: "AMSGrad max of v"} if self.amsgrad else {1: "second moment v"}

    def get_config(self) -> dict:
        cfg = super().get_config()
        cfg["betas"] = list(self.betas)
        return cfg


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr*weight_decay, then the Adam step."""

    kind = "adamw"

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 learning_rate=None, beta_1=None, beta_2=None, **clipping):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, learning_rate=learning_rate, beta_1=beta_1,
                         beta_2=beta_2, **clipping)


class _AdamFamily(Optimizer):
    """Shared by NAdam, RAdam and LAMB: betas, eps and their two moment slots."""

    _fields = ("betas", "eps")

    def _init_moments(self, betas, eps, beta_1, beta_2):
        self.betas = _betas(betas, beta_1, beta_2)
        self.eps = _number("eps", eps)

    def _fill(self, c):
        c.beta1, c.beta2 = self.betas
        c.eps = self.eps

    def nonnegative_state_slots(self) -> dict:
        return {1: "second moment v"}

    def get_config(self) -> dict:
        cfg = super().get_config()
        cfg["betas"] = list(self.betas)
        return cfg


class NAdam(_AdamFamily):
    """torch.optim.NAdam: Adam with Nesterov momentum, mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay));
    p -= lr (1 - mu_t) / (1 - prod mu) * g / d + lr mu_{t+1} / (1 - prod mu ... mu_{t+1}) * m / d,
    d = sqrt(v / (1 - beta2^t)) + eps."""

    kind = "nadam"
    _fields = ("betas", "eps", "momentum_decay", "decoupled_weight_decay")

    def __init__(self, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, learning_rate=None, beta_1=None, beta_2=None, **clipping):
        super().__init__(lr, learning_rate, weight_decay, **clipping)
        self._init_moments(betas, eps, beta_1, beta_2)
        self.momentum_decay = _number("momentum_decay", momentum_decay)
        self.decoupled_weight_decay = boolean(decoupled_weight_decay, "decoupled_weight_decay")

    def _fill(self, c):
        super()._fill(c)
        c.momentum_decay, c.decoupled_weight_decay = self.momentum_decay, self.decoupled_weight_decay


class RAdam(_AdamFamily):
    """torch.optim.RAdam: Adam whose adaptive step is used only once the variance of its rate is
    tractable (rho_t > 5), then scaled by the rectification term r_t; before that, SGD with momentum."""

    kind = "radam"
    _fields = ("betas", "eps", "decoupled_weight_decay")

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, *,
                 learning_rate=None, beta_1=None, beta_2=None, **clipping):
        super().__init__(lr, learning_rate, weight_decay, **clipping)
        self._init_moments(betas, eps, beta_1, beta_2)
        self.decoupled_weight_decay = boolean(decoupled_weight_decay, "decoupled_weight_decay")

    def _fill(self, c):
        super()._fill(c)
        c.decoupled_weight_decay = self.decoupled_weight_decay


class LAMB(_AdamFamily):
    """LAMB (You et al. 2019, Algorithm 2): r = m_hat / (sqrt(v_hat) + eps) + weight_decay * p, and
    p -= lr * (||p|| / ||r||) * r with the trust ratio taken per kernel and per bias (1 when either
    norm is 0)."""

    kind = "lamb"

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, *, learning_rate=None, beta_1=None,
                 beta_2=None, **clipping):
        super().__init__(lr, learning_rate, weight_decay, **clipping)
        self._init_moments(betas, eps, beta_1, beta_2)


class FullBatchOptimizer(Optimizer):
    """A method that takes whole steps over a batch (each fit epoch over all rows, or each batch
    when fit's batch_size is smaller, or each train_on_batch call is one `step`), natively or from
    native passes; the per-step engine update is unused."""

    full_batch = True

    def native(self):
        # The engine's per-step update is not used; a stateless SGD config with lr 0 keeps it harmless.
        c = _core.OptimizerConfig()
        c.kind = OPTIMIZER_IDS["sgd"]
        c.lr = 0.0
        return c

    def get_config(self) -> dict:
        cfg = super().get_config()
        del cfg["weight_decay"]  # none of them has one (the layers' regularizers still apply)
        return cfg

    def check_model(self, model):
        """Raises ValueError when the method cannot train this model (called by compile)."""
        from .layers import BatchNormalization, Dropout

        random = [type(layer).__name__ for layer in model.layers if isinstance(layer, (Dropout, BatchNormalization))]
        if random:
            raise ValueError(f"{type(self).__name__} needs a deterministic loss, but the model has {', '.join(random)} "
                             "(its steps compare losses of one batch); remove them or use another optimizer")

    def reset(self):
        """Forgets the state kept between steps (a new compile)."""

    def step(self, engine, data) -> dict:
        """One step over `data`: {"loss": at the start, "metric": there, "nonfinite": bool}."""
        raise NotImplementedError


class LBFGS(FullBatchOptimizer):
    """torch.optim.LBFGS, run natively over the full batch: each fit epoch (each batch when fit's
    batch_size is smaller than the rows, or each train_on_batch call) is one `step`, up to max_iter iterations of the two-loop recursion over the last
    history_size curvature pairs, with a fixed step lr (the very first scaled by min(1, 1/|g|_1))
    or line_search_fn="strong_wolfe". The loss must be deterministic, so models with Dropout or
    BatchNormalization are refused. The curvature history lives with the compiled model; it is
    not saved with it (a loaded model starts a new history)."""

    kind = "lbfgs"
    _fields = ("max_iter", "max_eval", "tolerance_grad", "tolerance_change", "history_size", "line_search_fn")

    def __init__(self, lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9,
                 history_size=100, line_search_fn=None, *, learning_rate=None):
        super().__init__(lr, learning_rate, 0.0)
        if not isinstance(self.schedule, Constant) or self.schedule.warmup_steps:
            raise ValueError("LBFGS takes a number for lr, not a schedule")
        self.max_iter = positive_int(max_iter, "max_iter")
        self.max_eval = self.max_iter * 5 // 4 if max_eval is None else positive_int(max_eval, "max_eval")
        self.tolerance_grad = _number("tolerance_grad", tolerance_grad)
        self.tolerance_change = _number("tolerance_change", tolerance_change)
        self.history_size = positive_int(history_size, "history_size")
        if line_search_fn not in (None, "strong_wolfe"):
            raise ValueError(f"line_search_fn must be None or 'strong_wolfe', got {line_search_fn!r}")
        self.line_search_fn = line_search_fn

    def step(self, engine, data) -> dict:
        return engine.lbfgs_step(data, self.lbfgs_config())

    def lbfgs_config(self):
        c = _core.LbfgsConfig()
        c.lr = self.lr
        c.max_iter, c.max_eval, c.history_size = self.max_iter, self.max_eval, self.history_size
        c.tolerance_grad, c.tolerance_change = self.tolerance_grad, self.tolerance_change
        c.strong_wolfe = self.line_search_fn == "strong_wolfe"
        return c


class _SecondOrder(FullBatchOptimizer):
    """Shared by Newton and HessianFree: Levenberg-Marquardt damping kept between steps, and the
    full-batch loss, gradient and Hessian-vector products of the engine (fm.hvp's R-operator).
    lr scales the step (1: the full step of the damped model)."""

    def reset(self):
        self.damping_ = self.damping

    def check_model(self, model):
        super().check_model(model)
        bad = [type(layer).__name__ for layer in model.layers if type(layer).__name__ != "Dense"
               and type(layer).__name__ != "Activation"]
        if bad:
            raise ValueError(f"{type(self).__name__} needs Hessian-vector products, which support Dense layers only "
                             f"(the model has {', '.join(bad)})")

    @staticmethod
    def _loss(engine, data, theta):
        engine.set_params(theta)
        return engine.training_loss(data)

    def _descend(self, engine, data, theta0, loss0, slope, direction, max_halvings=12):
        """Backtracking (Armijo) along theta0 + a * direction, a = lr, lr/2, ...: the first point
        whose loss is below loss0 + 1e-4 * a * slope (slope = g . direction < 0), with its loss;
        (None, loss at a = lr) when none is."""
        import numpy as np

        a, first = self.lr, None
        for _ in range(max_halvings):
            theta = (theta0 + a * direction).astype(theta0.dtype)
            loss = self._loss(engine, data, theta)
            first = loss if first is None else first
            if np.isfinite(loss) and loss <= loss0 + 1e-4 * a * slope:
                return theta, loss, first
            a /= 2
        return None, None, first

    def _finish(self, engine, theta0, loss0, metric0, theta, loss):
        import numpy as np

        if not np.isfinite(loss) or not np.all(np.isfinite(theta)):
            engine.set_params(theta0)
            return {"loss": loss0, "metric": metric0, "nonfinite": True}
        engine.set_params(theta)
        return {"loss": loss0, "metric": metric0, "nonfinite": False}


class Newton(_SecondOrder):
    """Damped Newton steps over the full batch, for small models: d = -(|H| + lambda I)^-1 g with
    the exact Hessian (one Hessian-vector product per parameter, then its eigendecomposition; |H|
    takes the eigenvalues' sizes, which is H itself where the loss is convex and the saddle-free
    step of Dauphin et al. 2014 where it is not), then backtrack along lr * d (Armijo) until the
    loss drops; when it never does, lambda grows tenfold and the step is recomputed. lambda adapts
    as in Levenberg-Marquardt to the ratio rho of the full step's actual to predicted reduction
    (rho > 3/4: lambda / 3, not below min_damping; rho < 1/4: lambda * 3). Pure Newton (lambda = 0) fails on softmax regression, whose Hessian is singular
    along the shared-logit direction. Refused above max_params parameters."""

    kind = "newton"
    _fields = ("damping", "min_damping", "max_tries", "max_params")

    def __init__(self, damping=1e-4, min_damping=1e-12, max_tries=20, max_params=2000, *, lr=1.0, learning_rate=None):
        super().__init__(lr, learning_rate, 0.0)
        self.damping = _number("damping", damping, low=0.0, low_inclusive=False)
        self.min_damping = _number("min_damping", min_damping)
        self.max_tries = positive_int(max_tries, "max_tries")
        self.max_params = positive_int(max_params, "max_params")
        self.reset()

    def check_model(self, model):
        super().check_model(model)
        try:
            n = model.count_params()
        except (RuntimeError, ValueError):  # not built yet: step checks
            return
        if n > self.max_params:
            raise ValueError(f"Newton needs the {n} x {n} Hessian of this model, above max_params={self.max_params}; "
                             "use HessianFree (Hessian-vector products only) or raise max_params")

    def step(self, engine, data) -> dict:
        import numpy as np

        theta0 = np.array(engine.get_params())
        n = theta0.size
        if n > self.max_params:
            raise ValueError(f"Newton needs the {n} x {n} Hessian of this model, above max_params={self.max_params}; "
                             "use HessianFree (Hessian-vector products only) or raise max_params")
        loss0, g = engine.compute_gradients(data)
        metric0 = engine.evaluate(data, 1 << 30)["metric"]
        from .curvature import hessian_of

        H = hessian_of(engine, data, n, theta0.dtype)
        H = (H + H.T) / 2
        g = np.asarray(g, dtype=np.float64)
        # Where the loss is not convex, negative eigenvalues count by their size (|H|, the
        # saddle-free Newton step of Dauphin et al. 2014), so d is a descent direction that moves
        # away from saddles; for a convex loss this is (H + lambda I)^-1 applied to -g.
        eigenvalues, vectors = np.linalg.eigh(H)
        coords = vectors.T @ g
        for _ in range(self.max_tries):
            d = -vectors @ (coords / (np.abs(eigenvalues) + self.damping_))
            slope = float(g @ d)
            if np.all(np.isfinite(d)) and slope < 0:
                theta, loss, full_step_loss = self._descend(engine, data, theta0, loss0, slope, d)
                # Levenberg-Marquardt: compare the full step's actual and predicted reductions.
                predicted = self.lr * slope + 0.5 * self.lr ** 2 * float(d @ H @ d)
                rho = (full_step_loss - loss0) / predicted if predicted < 0 and np.isfinite(full_step_loss) else -1.0
                if rho > 0.75:
                    self.damping_ = max(self.damping_ / 3, self.min_damping)
                elif rho < 0.25:
                    self.damping_ *= 3
                if theta is not None:
                    return self._finish(engine, theta0, loss0, metric0, theta, loss)
            self.damping_ *= 10
        return self._finish(engine, theta0, loss0, metric0, theta0, loss0)  # no descent found: unchanged


class HessianFree(_SecondOrder):
    """Truncated Newton (Martens 2010): each step runs up to cg_iters conjugate-gradient iterations
    on (H + lambda I) d = -g with exact Hessian-vector products (never forming H), starting from
    the previous direction times 0.95, backtracks along it (Armijo) until the loss drops, and
    adapts lambda by the ratio rho of the actual to the predicted reduction of the full step
    (rho < 1/4: lambda * 3/2; rho > 3/4: lambda * 2/3). No step is taken when none lowers the loss."""

    kind = "hessian_free"
    _fields = ("cg_iters", "damping", "cg_tol")

    def __init__(self, cg_iters=50, damping=1.0, cg_tol=1e-10, *, lr=1.0, learning_rate=None):
        super().__init__(lr, learning_rate, 0.0)
        self.cg_iters = positive_int(cg_iters, "cg_iters")
        self.damping = _number("damping", damping, low=0.0, low_inclusive=False)
        self.cg_tol = _number("cg_tol", cg_tol)
        self.reset()

    def reset(self):
        super().reset()
        self._previous = None

    def step(self, engine, data) -> dict:
        import numpy as np

        theta0 = np.array(engine.get_params())
        dtype = theta0.dtype
        loss0, g = engine.compute_gradients(data)
        metric0 = engine.evaluate(data, 1 << 30)["metric"]
        g = np.asarray(g, dtype=np.float64)
        lam = self.damping_

        def Av(v):  # (H + lambda I) v at theta0 (the parameters are theta0 while CG runs)
            return engine.hessian_vector_product(data, v.astype(dtype))[1].astype(np.float64) + lam * v

        x = 0.95 * self._previous if self._previous is not None and self._previous.size == g.size else np.zeros_like(g)
        r = -g - Av(x)
        p = r.copy()
        rr = r @ r
        for _ in range(self.cg_iters):
            if rr <= self.cg_tol * self.cg_tol:
                break
            Ap = Av(p)
            pAp = p @ Ap
            if not pAp > 0:  # negative curvature even with the damping: stop at the current x
                break
            alpha = rr / pAp
            x += alpha * p
            r -= alpha * Ap
            rr_new = r @ r
            p = r + (rr_new / rr) * p
            rr = rr_new
        predicted = g @ x + 0.5 * (x @ Av(x))  # the damped quadratic model's change for the full step
        slope = float(g @ x)
        theta, loss, full_step_loss = (None, None, np.inf) if not slope < 0 else \
            self._descend(engine, data, theta0, loss0, slope, x)
        rho = (full_step_loss - loss0) / predicted if predicted < 0 and np.isfinite(full_step_loss) else -np.inf
        if rho < 0.25:
            self.damping_ = lam * 1.5
        elif rho > 0.75:
            self.damping_ = lam * 2 / 3
        if theta is not None:
            self._previous = x
            return self._finish(engine, theta0, loss0, metric0, theta, loss)
        self._previous = None
        return self._finish(engine, theta0, loss0, metric0, theta0, loss0)


def _betas(betas, beta_1=None, beta_2=None):
    if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    b1, b2 = betas
    b1 = b1 if beta_1 is None else beta_1
    b2 = b2 if beta_2 is None else beta_2
    return (_number("beta1", b1, high=1.0), _number("beta2", b2, high=1.0))


# The per-step optimizers, one per native kind (types.h's list is the source of both), and the
# full-batch methods that run their own native loop.
_PER_STEP = {c.kind: c for c in (SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW, NAdam, RAdam, LAMB)}
assert set(_PER_STEP) == set(OPTIMIZER_IDS), "optimizers.py and the core's optimizer list disagree"
_BY_NAME = {**_PER_STEP, "lbfgs": LBFGS, "newton": Newton, "hessian_free": HessianFree}


def get(identifier) -> Optimizer:
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _BY_NAME:
            raise ValueError(f"unknown optimizer {identifier!r}; choose one of: {', '.join(sorted(_BY_NAME))}")
        return _BY_NAME[key]()
    raise TypeError(f"optimizer must be a string or an fm.optimizers.Optimizer, got {type(identifier).__name__}")


def from_config(config: dict) -> Optimizer:
    """The optimizer that get_config described, built through its constructor so every field is
    checked as the constructor checks it; unknown kinds or fields, wrong types and out-of-range
    values (here or in the schedule) raise ValueError naming the field. Missing hyper-parameters
    take the constructor's defaults; kind and schedule are required."""
    from .schedules import from_config as schedule_from_config

    cls = config_class(config, "optimizer", "kind", _BY_NAME,
                       lambda cls: {"kind", "schedule", "weight_decay", *cls._fields, *_CLIPPING})
    kind = config["kind"]
    if "schedule" not in config:
        raise ValueError("optimizer config is missing the field 'schedule'")
    try:
        schedule = schedule_from_config(config["schedule"])
    except ValueError as exc:
        raise ValueError(f"optimizer config field 'schedule': {exc}") from None
    kwargs = {k: v for k, v in config.items() if k not in ("kind", "schedule")}
    if "betas" in kwargs and isinstance(kwargs["betas"], list):  # JSON writes the tuple as a list
        kwargs["betas"] = tuple(kwargs["betas"])
    try:
        return cls(lr=schedule, **kwargs)
    except ValueError as exc:
        raise ValueError(f"optimizer config ({kind!r}): {exc}") from None


__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "NAdam", "RAdam", "LAMB", "LBFGS",
           "Newton", "HessianFree", "get"]
